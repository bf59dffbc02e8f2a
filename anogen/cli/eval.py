"""Train a small segmentation network on the synthetic anomalies and score it on held-out real ones."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from anogen.cli._common import (
    CategoryOpt,
    DryRunOpt,
    FormatOpt,
    JsonOpt,
    QuietOpt,
    SeedOpt,
    epilog,
    make_output,
)

EPILOG = epilog(
    "anogen eval --data /data/mvtec --category bottle --synth synth/",
    "anogen eval --data toy_data/widget --synth synth/widget --baseline perlin --baseline cutpaste --baseline none",
    "anogen eval --data toy_data/widget --synth synth/widget --quality --steps 50 --json --out eval.json",
)

METRIC_COLUMNS = (
    ("image_auroc", "I-AUROC"),
    ("image_ap", "I-AP"),
    ("image_f1_max", "I-F1max"),
    ("pixel_auroc", "P-AUROC"),
    ("pixel_ap", "P-AP"),
    ("pixel_f1_max", "P-F1max"),
    ("aupro", "AU-PRO"),
)


def eval_command(
    data: Annotated[Path, typer.Option("--data", help="The real data: a category folder, or a root with --category.")],
    synth: Annotated[Path, typer.Option("--synth", help="`anogen synth` output: root, category or defect folder.")],
    category: CategoryOpt = None,
    dataset_format: FormatOpt = "auto",
    baseline: Annotated[
        list[str] | None,
        typer.Option(
            "--baseline",
            help="Also train on classical anomalies for comparison: perlin | cutpaste | none (the real shots "
            "alone). Repeat for several.",
        ),
    ] = None,
    quality: Annotated[
        bool, typer.Option("--quality", help="Add alignment, diversity, memorisation and rejection figures.")
    ] = False,
    steps: Annotated[int, typer.Option("--steps", min=1, help="Training steps per method.")] = 400,
    resolution: Annotated[int, typer.Option("--resolution", min=8, help="Square size images are resized to.")] = 64,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Images per training step.")] = 16,
    device: Annotated[str, typer.Option("--device", help="auto (CUDA when present) | cpu | cuda | cuda:N.")] = "auto",
    seed: SeedOpt = None,
    out_file: Annotated[Path | None, typer.Option("--out", help="Also write the JSON result to this file.")] = None,
    dry_run: DryRunOpt = False,
    json_output: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Train a small segmentation network on the synthetic anomalies and score it on held-out real ones.

    The network (a DRAEM-style U-Net, focal loss) learns from the category's normal training images plus the
    accepted synthetic samples; weights are selected on a synthetic validation split, never on the test set.
    The test set is test/good plus the real defect images the fit split held out; an image used for training
    is refused. Reports image and pixel AUROC / AP / F1-max and AU-PRO (FPR up to 0.3).
    """
    from anogen.data import read_category
    from anogen.errors import DataError
    from anogen.eval.protocol import EvalConfig, plan_eval, read_synth
    from anogen.io import write_json_atomic

    out = make_output(quiet=quiet, json_mode=json_output)
    config = EvalConfig(
        resolution=resolution,
        steps=steps,
        batch_size=batch_size,
        baselines=tuple(baseline or ()),
        device=device,
        seed=0 if seed is None else seed,
    )
    config.validate()
    cat = read_category(data, category=category, dataset_format=dataset_format)
    if cat.errors:
        first = cat.errors[0]
        raise DataError(f"{first.path or cat.root}: {first.message}", hint=f"run `anogen data check {data}`")
    plan = plan_eval(cat, read_synth(synth, category=cat.name))
    summary = plan.summary()
    if dry_run:
        from anogen.eval.protocol import resolve_device

        resolve_device(config.device)  # the real run's device check, before anything is trained
        out.emit_json({"dry_run": True, "plan": summary, "config": config.__dict__})
        out.result(_plan_text(summary, config))
        return

    from anogen.eval.protocol import run_eval

    out.info(_plan_text(summary, config))
    with out.progress() as display:
        result = run_eval(plan, config, progress=display)
    if quality:
        result["quality"] = _quality(plan, cat.dataset_format, config.seed)
    if out_file is not None:
        write_json_atomic(out_file, result)
    out.emit_json(result)
    out.table(_metrics_table(result))
    if quality:
        out.table(_quality_table(result["quality"]))
    if out_file is not None:
        out.info(f"wrote {escape(str(out_file))}")


def _quality(plan: Any, dataset_format: str, seed: int) -> dict[str, Any]:
    from anogen.eval.quality import measure_quality

    defect_pixels = None
    if dataset_format == "toy":
        # Only the toy world has known defect colours; elsewhere alignment is not measurable.
        from anogen.toy import defect_pixels
    shots: dict[str, list[Path]] = {}
    for item in plan.shots:
        shots.setdefault(item.group, []).append(item.path)
    return measure_quality(plan.synth, shots, defect_pixels=defect_pixels, seed=seed)


def _plan_text(summary: dict[str, Any], config: Any) -> str:
    test = ", ".join(f"{k} {v}" for k, v in summary["test_images"].items())
    synth = ", ".join(f"{k} {v}" for k, v in summary["synth_samples"].items())
    methods = ", ".join(["anogen", *config.baselines])
    lines = [
        f"category {escape(summary['category'])}: {summary['train_normals']} normal training images, "
        f"{summary['real_shots']} real shots",
        f"synthetic samples: {escape(synth)}",
        f"test images: {escape(test)}",
        f"methods: {methods}; {config.steps} steps at {config.resolution} px, batch {config.batch_size}",
    ]
    if summary["skipped_defects"]:
        lines.append(f"not evaluated (no synth output): {escape(', '.join(summary['skipped_defects']))}")
    return "\n".join(lines)


def _metrics_table(result: dict[str, Any]) -> Table:
    table = Table("method", *(label for _, label in METRIC_COLUMNS), "selected step", title="downstream detection")
    for method, entry in result["methods"].items():
        m = entry["metrics"]
        cells = ("-" if m[key] is None else f"{m[key]:.3f}" for key, _ in METRIC_COLUMNS)
        table.add_row(method, *cells, str(entry["selection"]["step"]))
    return table


def _quality_table(quality: dict[str, Any]) -> Table:
    table = Table(
        "defect", "samples", "alignment IoU", "chance IoU", "diversity", "real diversity",
        "nearest shot (median)", "near-copies", "rejected", title="sample quality",
    )

    def fmt(value: Any, spec: str = ".3f") -> str:
        return "-" if value is None else format(value, spec)

    for defect, q in quality.items():
        align = q["alignment"] or {}
        rej = q["rejections"]
        table.add_row(
            escape(defect), str(q["samples"]), fmt(align.get("iou")), fmt(align.get("chance_iou")),
            fmt(q["diversity"]), fmt(q["real_shot_diversity"]), fmt(q["memorisation"]["median"]),
            str(q["memorisation"]["near_copies"]), fmt(rej["rejected_share"], ".1%"),
        )
    return table
