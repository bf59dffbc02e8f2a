"""Generate N accepted (image, part, mask) triples per defect type from fitted adapters.

Writes ``OUT/<category>/<defect>/{image,part,mask}/NNNNNN.png``, ``manifest.jsonl`` and ``run.json``. Rerunning the
same command resumes (or tops up after ``anogen mask``); under ``accelerate launch`` processes share the work.
See docs/synth.md.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from anogen.cli._common import (
    AlignmentFloorOpt,
    ConfigOpt,
    DryRunOpt,
    JsonOpt,
    MaskThresholdOpt,
    MaxBackgroundOpt,
    MinAlignmentOpt,
    MinCopyOpt,
    OnObjectOpt,
    PresetOpt,
    QuietOpt,
    RecipeOpt,
    SeedOpt,
    epilog,
    format_duration,
    make_output,
    parse_mask_threshold,
    verify_overrides,
)
from anogen.dist import is_main_process

EPILOG = epilog(
    "anogen synth runs --count 200 --out synth",
    "anogen synth runs/bottle/crack --count 50 --out synth --batch-size 8 --seed 1",
    "anogen synth runs --count 100 --out synth --recipe fast   # 30 DPM-Solver++ steps instead of the reference's PNDM",
    "anogen synth runs --count 1000 --out synth --dry-run",
    "accelerate launch --num_processes 4 -m anogen synth runs --count 1000 --out synth",
)

VerifyOpt = Annotated[
    str | None,
    typer.Option(
        "--verify",
        help="Check each sample against the category's normals (docs/verify.md): reject (failing samples are "
        "rejected), score (scores recorded, nothing rejected) or off. Default: the adapter's fit preset "
        "(score for every preset until its thresholds are validated).",
    ),
]

RefineOpt = Annotated[
    bool | None,
    typer.Option(
        "--refine-mask/--no-refine-mask",
        help="With verification on: let the whole image's anomaly map re-decide each mask's rim before the "
        "checks (verify.refine; measured to lower the toy figures, so off by default: docs/verify.md).",
    ),
]


def synth_command(
    runs: Annotated[Path, typer.Argument(help="Fit output: the root, a category folder or a defect folder.")],
    count: Annotated[
        int | None,
        typer.Option(
            "--count",
            "-n",
            help="Accepted samples per defect type (default: sample.count recorded in each adapter from its fit "
            "preset: 1000 for mvtec/, visa/ and generic/ presets, 16 for toy/; --preset or --config override it).",
        ),
    ] = None,
    out: Annotated[Path, typer.Option("--out", help="Output root: OUT/<category>/<defect>/.")] = Path("synth"),
    batch_size: Annotated[int | None, typer.Option("--batch-size", help="(whole, part) pairs per batch.")] = None,
    seed: SeedOpt = None,
    steps: Annotated[int | None, typer.Option("--steps", help="Denoising steps.")] = None,
    sampler: Annotated[
        str | None, typer.Option("--sampler", help="dpmsolver++ | sde-dpmsolver++ | ddpm | ddim | euler | pndm.")
    ] = None,
    guidance: Annotated[float | None, typer.Option("--guidance", help="Classifier-free guidance scale.")] = None,
    max_attempts: Annotated[
        int | None, typer.Option("--max-attempts", help="Attempts per defect type at most (default 4 x count).")
    ] = None,
    mixed_precision: Annotated[
        str | None, typer.Option("--mixed-precision", help="no | fp16 | bf16 (GPU only; ignored on CPU).")
    ] = None,
    threshold: MaskThresholdOpt = None,
    on_object_only: OnObjectOpt = None,
    verify: VerifyOpt = None,
    min_alignment: MinAlignmentOpt = None,
    max_background: MaxBackgroundOpt = None,
    min_copy_distance: MinCopyOpt = None,
    alignment_floor: AlignmentFloorOpt = None,
    refine_mask: RefineOpt = None,
    preset: PresetOpt = None,
    recipe: RecipeOpt = None,
    config: ConfigOpt = None,
    device: Annotated[str | None, typer.Option("--device", help="cpu, cuda, cuda:1 (default: auto).")] = None,
    dry_run: DryRunOpt = False,
    json_output: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Generate COUNT accepted (image, part, mask) triples per defect type; resumable, deterministic by seed."""
    from anogen import synth as synth_lib
    from anogen.config import ConfigRequest

    main_process = is_main_process()
    # Under a launcher only rank 0 talks; the others would print the same progress again.
    out_ = make_output(quiet=quiet or not main_process, json_mode=json_output)
    overrides: dict[str, dict[str, Any]] = {
        "sample": {
            "count": count,
            "batch_size": batch_size,
            "seed": seed,
            "steps": steps,
            "sampler": sampler,
            "guidance": guidance,
            "max_attempts": max_attempts,
            "mixed_precision": mixed_precision,
        },
        "mask": {"threshold": parse_mask_threshold(threshold), "on_object_only": on_object_only},
        "verify": {**verify_overrides(verify, min_alignment, max_background, min_copy_distance, alignment_floor),
                   "refine": refine_mask},
    }
    # Resolved by the library, once per adapter, over the configs that adapter recorded at fit.
    request = ConfigRequest(preset=preset, config_file=config, overrides=overrides, recipe=recipe)
    if dry_run:
        jobs = synth_lib.prepare_jobs(runs, out, request)
        synth_lib.check_backbones(jobs)  # what the real run checks before it loads weights
        entries = synth_lib.plan(jobs)
        if main_process:
            _print_plan(out_, entries)
        return
    with out_.progress() as display:
        summary = synth_lib.synthesize(runs, out, request, progress=display, device=device)
    if not main_process:
        return
    out_.emit_json(summary.to_dict())
    _print_summary(out_, summary)
    if summary.exhausted:
        short = [f"{d.category}/{d.defect} ({d.accepted}/{d.count})" for d in summary.defects if d.exhausted]
        out_.error(
            escape(f"max attempts reached before count for {', '.join(short)}; results are kept"),
            hint="rerun with a larger --max-attempts to continue, or loosen the mask settings (`anogen mask`)",
        )
        raise typer.Exit(1)


def _print_plan(out: Any, entries: list[dict[str, Any]]) -> None:
    out.emit_json({"dry_run": True, "plan": entries})
    table = Table("category/defect", "have", "count", "to generate", "sampler", "est. time", "est. disk", "out")
    for e in entries:
        table.add_row(
            escape(f"{e['category']}/{e['defect']}"),
            str(e["accepted"]),
            str(e["count"]),
            f"{e['to_generate']} (max {e['max_attempts']})",
            f"{e['sampler']} x{e['steps']}, g {e['guidance']}",
            f"{format_duration(e['estimated_s'])} ({e['estimate_basis']})",
            f"{e['estimated_disk_mb']:.1f} MB",
            escape(e["out"]),
        )
    out.table(table)
    total_s = sum(e["estimated_s"] for e in entries)
    total_mb = sum(e["estimated_disk_mb"] for e in entries)
    out.result(f"total: about {format_duration(total_s)} and {total_mb:.1f} MB (no model loaded, nothing written)")


def _print_summary(out: Any, summary: Any) -> None:
    table = Table("category/defect", "accepted", "rejected", "attempts", "mean mask area", "time", "samples/s")
    for d in summary.defects:
        rejected = ", ".join(f"{k} {v}" for k, v in d.rejected.items()) or "0"
        area = f"{d.mean_mask_area:.3f}" if d.mean_mask_area is not None else "-"
        table.add_row(
            escape(f"{d.category}/{d.defect}"),
            f"{d.accepted}/{d.count}",
            rejected,
            str(d.attempts),
            area,
            format_duration(d.elapsed_s),
            f"{d.samples_per_s:.2f}",
        )
    out.table(table)
