"""Train one dual adapter per defect type of a category (``RUNS/<category>/<defect>/adapter.safetensors``).

Resumable (``--resume``), checkpointed, validated with a sample grid; spreads over GPUs or nodes under
``accelerate launch`` (``--parallel``). See docs/fit.md.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from anogen.cli._common import (
    BackboneOpt,
    CategoryOpt,
    ConfigOpt,
    DryRunOpt,
    FormatOpt,
    JsonOpt,
    PresetOpt,
    QuietOpt,
    RecipeOpt,
    SeedOpt,
    epilog,
    format_duration,
    make_output,
)
from anogen.dist import is_main_process
from anogen.errors import InputError

EPILOG = epilog(
    "anogen fit ./toy/widget --backbone toy --steps 300",
    "anogen fit /data/mvtec --category bottle --defect crack --prior priors --out runs",
    "anogen fit /data/mvtec/bottle --dry-run --mixed-precision bf16 --gradient-checkpointing",
    "anogen fit /data/mvtec/bottle --prior priors --resume",
    "anogen fit /data/mvtec --category bottle --prior priors --recipe fast",
    "accelerate launch --num_processes 4 -m anogen fit /data/mvtec/bottle --prior priors --parallel defects",
)

DefectOpt = Annotated[
    list[str] | None, typer.Option("--defect", help="Train only this defect type (repeat for several).")
]


def _on_off(value: str | None, flag: str) -> bool | None:
    if value is None:
        return None
    if value not in ("on", "off"):
        raise InputError(f"{flag} takes on or off (got {value!r})")
    return value == "on"


def _mib(value: int | None) -> str:
    if value is None:
        return "unknown (backbone configs not local)"
    return f"{value / 2**30:.2f} GiB" if value >= 2**30 else f"{value / 2**20:.0f} MiB"


def _eta(seconds: float | None, basis: str) -> str:
    if seconds is None:
        return "unknown (backbone configs not local)"
    return f"{format_duration(seconds)} ({basis})"


def fit_command(
    data: Annotated[Path, typer.Argument(help="A category folder, or a dataset root with --category.")],
    category: CategoryOpt = None,
    defect: DefectOpt = None,
    dataset_format: FormatOpt = "auto",
    preset: PresetOpt = None,
    recipe: RecipeOpt = None,
    config: ConfigOpt = None,
    backbone: BackboneOpt = None,
    coupling: Annotated[
        str | None, typer.Option("--coupling", help="saim (couple the branches) or none (ablation).")
    ] = None,
    bcm: Annotated[
        str | None,
        typer.Option("--bcm", help="on|off: background compensation (its prior: --prior, else built in OUT/_prior)."),
    ] = None,
    prior: Annotated[
        Path | None,
        typer.Option("--prior", help="Output of `anogen prior` (BCM backgrounds; default: OUT/_prior, built once)."),
    ] = None,
    steps: Annotated[
        int | None,
        typer.Option("--steps", help="Optimiser steps per adapter (with --resume: a new target for recorded runs)."),
    ] = None,
    lr: Annotated[float | None, typer.Option("--lr", help="AdamW learning rate.")] = None,
    rank: Annotated[int | None, typer.Option("--rank", help="LoRA rank per branch.")] = None,
    batch_size: Annotated[
        int | None, typer.Option("--batch-size", help="(whole, part) pairs per step and process.")
    ] = None,
    shots: Annotated[
        int | None, typer.Option("--shots", help="Training images per defect type (default floor(N/3)).")
    ] = None,
    resolution: Annotated[int | None, typer.Option("--resolution", help="Training resolution in pixels.")] = None,
    mixed_precision: Annotated[
        str | None, typer.Option("--mixed-precision", help="no | fp16 (GPU) | bf16.")
    ] = None,
    gradient_checkpointing: Annotated[
        bool | None,
        typer.Option("--gradient-checkpointing/--no-gradient-checkpointing", help="Trade compute for memory."),
    ] = None,
    gradient_accumulation: Annotated[
        int | None, typer.Option("--gradient-accumulation", help="Micro-batches per optimiser step.")
    ] = None,
    max_grad_norm: Annotated[
        float | None, typer.Option("--max-grad-norm", help="Clip the gradient to this L2 norm (0: no clipping).")
    ] = None,
    save_dtype: Annotated[
        str | None, typer.Option("--save-dtype", help="fp16 | fp32: precision of adapter.safetensors.")
    ] = None,
    checkpoint_every: Annotated[
        int | None, typer.Option("--checkpoint-every", help="Steps between checkpoints (0: none).")
    ] = None,
    validate_every: Annotated[
        int | None, typer.Option("--validate-every", help="Steps between validation grids (0: only at the end).")
    ] = None,
    parallel: Annotated[
        str, typer.Option("--parallel", help="Under accelerate launch: auto | defects | data.")
    ] = "auto",
    seed: SeedOpt = None,
    out: Annotated[Path, typer.Option("--out", help="Runs root: adapters go to OUT/<category>/<defect>/.")] = Path(
        "runs"
    ),
    resume: Annotated[
        bool,
        typer.Option(
            "--resume",
            help="Continue each adapter's recorded run, from its latest checkpoint, to its recorded number of steps "
            "(--steps changes that target).",
        ),
    ] = False,
    dry_run: DryRunOpt = False,
    json_output: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Train one adapter per defect type: the whole image and its defect alone on grey, learnt together."""
    from anogen import fit as fitting
    from anogen.config import ConfigRequest, preset_line
    from anogen.data import read_category

    out_ = make_output(quiet=quiet, json_mode=json_output)
    if parallel not in ("auto", "defects", "data"):
        raise InputError(f"--parallel takes auto, defects or data (got {parallel!r})")
    bcm_value = _on_off(bcm, "--bcm")
    cat = read_category(data, category=category, dataset_format=dataset_format)
    overrides: dict[str, dict[str, Any]] = {
        "backbone": {"id": backbone},
        "adapter": {"coupling": coupling, "bcm": bcm_value, "rank": rank},
        "train": {
            "steps": steps,
            "learning_rate": lr,
            "batch_size": batch_size,
            "shots": shots,
            "resolution": resolution,
            "mixed_precision": mixed_precision,
            "gradient_checkpointing": gradient_checkpointing,
            "gradient_accumulation": gradient_accumulation,
            "save_dtype": save_dtype,
            "checkpoint_every": checkpoint_every,
            "validate_every": validate_every,
            "seed": seed,
            # 0 means "no clipping" (TrainConfig records it as null); None falls through to the preset's value.
            "max_grad_norm": max_grad_norm,
        },
    }
    # Resolved by the library, once: the preset chosen for the category when none is given, then the flags.
    request = ConfigRequest(preset=preset, config_file=config, overrides=overrides, recipe=recipe)
    resolved = fitting.fit_config(cat, request)
    preset_name = resolved.preset
    main_process = is_main_process()
    if main_process:
        out_.info(escape(preset_line(resolved)))
    resolved, notice = fitting.fit_resolution(resolved, request)
    if notice and main_process:
        out_.warn(escape(notice))
    kwargs: dict[str, Any] = {
        "defects": defect or None,
        "prior_dir": prior,
        "resume": resume,
        "parallel": parallel,
        # An explicit --steps is the only thing that moves a resumed run's recorded target.
        "retarget": resume and steps is not None,
    }

    def check_before_prior(prior_dir: Path) -> None:
        # Every input a user can fix (a misspelt --defect, a finished fit without --resume) stops before the
        # prior is built, which takes minutes on a large category.
        fitting.plan_fit(cat, resolved, out, **{**kwargs, "prior_dir": prior_dir, "prior_pending": True})

    auto = _auto_prior(
        out_, cat, resolved, out, prior, dry_run=dry_run, main_process=main_process, check=check_before_prior
    )
    if auto is not None:
        kwargs["prior_dir"] = auto.prior_dir
        if auto.status == "planned":  # a dry run: the prior fit would build does not exist yet
            kwargs["prior_pending"] = True

    def announce(plan: Any) -> None:
        if main_process:
            for line in _target_lines(plan, retarget=kwargs["retarget"]):
                (out_.warn if kwargs["retarget"] else out_.info)(escape(line))

    if dry_run:
        plan = fitting.plan_fit(cat, resolved, out, **kwargs)
        announce(plan)
        if not main_process:
            return
        out_.emit_json({"dry_run": True, "preset": preset_name, "plan": plan.to_dict()})
        _print_plan(out_, plan)
        return
    with out_.progress() as display:
        results = fitting.fit(cat, resolved, out, progress=display, on_plan=announce, **kwargs)
    if not main_process:
        return
    out_.emit_json(
        {"category": cat.name, "preset": preset_name, "out": str(out), "results": [r.to_dict() for r in results]}
    )
    table = Table("defect type", "status", "steps", "final loss", "adapter")
    for result in results:
        loss = f"{result.final_loss:.4f}" if result.final_loss is not None else "-"
        table.add_row(
            escape(result.defect), result.status, str(result.steps_done), loss, escape(str(result.folder))
        )
    out_.table(table)


def _auto_prior(
    out_: Any,
    cat: Any,
    resolved: Any,
    runs: Path,
    prior: Path | None,
    *,
    dry_run: bool,
    main_process: bool,
    check: Callable[[Path], Any],
) -> Any:
    """BCM on and no --prior: build (or reuse) the prior in RUNS/_prior/<category>, said in one line; ``check``
    (the fit's input checks, given the prior's folder) runs first."""
    from anogen.priors import auto_prior_dir, ensure_auto_prior, needs_auto_prior

    if not needs_auto_prior(cat, resolved, prior):
        return None
    if not dry_run:
        check(auto_prior_dir(runs))
    with out_.progress() as display:
        auto = ensure_auto_prior(cat, resolved, runs, dry_run=dry_run, build=main_process, progress=display)
    if main_process:
        out_.info(escape(auto.message()))
    return auto


def _target_lines(plan: Any, *, retarget: bool) -> list[str]:
    """One line on resumed targets: where --steps changes a recorded one, or where the recorded one is kept."""
    if retarget:
        changed = [f"{d.defect} {d.recorded_steps} -> {d.steps}" for d in plan.defects if d.recorded_steps is not None]
        if not changed:
            return []
        return [
            f"--steps {plan.steps} changes the recorded target ({', '.join(changed)} steps): training continues, "
            "and synth outputs made from the earlier adapters will be reported as stale"
        ]
    kept = sorted({d.steps for d in plan.defects if d.resume_from is not None and not d.complete})
    if kept and kept != [plan.steps]:
        targets = ", ".join(str(t) for t in kept)
        return [f"continuing the recorded run to its target of {targets} steps (--steps N to change the target)"]
    return []


def _print_plan(out: Any, plan: Any) -> None:
    if plan.native_resolution is None:
        native = "native size unknown: backbone configs not local"
    elif plan.native_resolution == plan.resolution:
        native = "the backbone's native size"
    else:
        native = f"the backbone's native size is {plan.native_resolution} px"
    out.result(
        f"[bold]{escape(plan.category)}[/bold]: {len(plan.defects)} adapter(s), {plan.steps} steps each, "
        f"batch {plan.batch_size} x accumulation {plan.gradient_accumulation} "
        f"(effective {plan.effective_batch}), {plan.resolution} px ({native}), backbone {escape(plan.backbone)}"
    )
    trainable = f"{plan.trainable_parameters:,}" if plan.trainable_parameters is not None else "unknown"
    out.result(
        f"trainable parameters per adapter: {trainable}; device {plan.device}, precision {plan.mixed_precision}"
        f"{', gradient checkpointing' if plan.gradient_checkpointing else ''}; "
        f"estimated peak memory per process: {_mib(plan.estimated_peak_bytes)}; "
        f"estimated time: {_eta(plan.estimated_seconds, plan.estimate_basis)}"
    )
    parts = plan.estimated_peak_parts
    if parts:
        gpu = parts.get("smallest_gpu_gib")
        out.result(
            f"  by part: weights {_mib(parts['weights'])}, adapter + optimizer state "
            f"{_mib(parts['adapter_and_optimizer'])}, activations {_mib(parts['activations'])}, "
            f"overhead {_mib(parts['overhead'])}; "
            + (f"smallest GPU it fits on: {gpu} GB" if gpu else "larger than any single common GPU")
        )
    out.result(
        f"processes: {plan.num_processes} ({plan.parallel}); BCM {'on' if plan.bcm else 'off'}"
        f"{f' (prior {escape(str(plan.prior))})' if plan.prior else ''}"
    )
    table = Table("defect type", "train", "held out", "process", "state", "folder")
    for item in plan.defects:
        if item.complete:
            state = f"complete ({item.steps} steps)"
        elif item.resume_from:
            state = f"resume {item.resume_from} -> {item.steps}"
        else:
            state = "new"
        table.add_row(
            escape(item.defect),
            str(len(item.split.train)),
            str(len(item.split.held_out)),
            str(item.process),
            state,
            escape(str(item.folder)),
        )
    out.table(table)
