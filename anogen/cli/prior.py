"""``anogen prior``: object masks, background images and defect-location statistics of a category."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import typer
from rich.markup import escape

from anogen.cli._common import (
    CategoryOpt,
    ConfigOpt,
    DryRunOpt,
    FormatOpt,
    JsonOpt,
    PresetOpt,
    QuietOpt,
    epilog,
    make_output,
    parse_object_threshold,
)

EPILOG = epilog(
    "anogen prior /data/mvtec/bottle --out priors/",
    "anogen prior /data/mvtec --category carpet --out priors/   # a texture: marked, no object masks",
    "anogen prior ./my_product --format folder --kind object --out priors/ --dry-run",
    "anogen prior toy_data/object --out priors/ --json",
)


def prior(
    data: Annotated[Path, typer.Argument(help="A category folder, or a dataset root with --category.")],
    out: Annotated[Path, typer.Option("--out", help="Prior root; writes OUT/<category>/.")],
    category: CategoryOpt = None,
    dataset_format: FormatOpt = "auto",
    kind: Annotated[
        str,
        typer.Option(
            "--kind",
            help="auto (the data set's knowledge, else the preset's BCM setting, else guessed from the images) "
            "| object | texture.",
        ),
    ] = "auto",
    preset: PresetOpt = None,
    config: ConfigOpt = None,
    threshold: Annotated[
        str | None,
        typer.Option("--threshold", help="Object threshold in background standard deviations, or 'otsu'."),
    ] = None,
    stats_from: Annotated[
        str,
        typer.Option(
            "--stats-from",
            help="Defect masks that feed the location maps and shape statistics: train (the few-shot training "
            "images, as `fit` splits them) | all (held-out masks too; not for generation you will evaluate).",
        ),
    ] = "train",
    shots: Annotated[
        int | None, typer.Option("--shots", min=1, help="Training images per defect type, as given to `fit --shots`.")
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Recompute everything, ignoring cached results.")] = False,
    dry_run: DryRunOpt = False,
    json_output: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Write per-image object masks and background images (object categories), and per defect type a location
    map and mask-shape statistics, to OUT/<category>/. Cached: a rerun on unchanged inputs writes nothing."""
    from anogen.errors import InputError
    from anogen.priors import PriorParams, build_prior, read_category_checked

    if kind not in ("auto", "object", "texture"):
        raise InputError(f"--kind must be auto, object or texture, not {kind!r}")
    if stats_from not in ("train", "all"):
        raise InputError(f"--stats-from must be train or all, not {stats_from!r}")
    params = PriorParams()
    if threshold is not None:
        params = PriorParams(threshold=parse_object_threshold(threshold))
    preset_bcm = None
    if preset is not None or config is not None:
        from anogen.config import resolve

        preset_bcm = resolve(preset=preset, config_file=config).adapter.bcm

    output = make_output(quiet=quiet, json_mode=json_output)
    requested: Literal["auto", "object", "texture"] = kind  # type: ignore[assignment]
    with output.progress() as progress:
        cat = read_category_checked(data, category=category, dataset_format=dataset_format, progress=progress)
        result = build_prior(
            cat,
            out,
            params=params,
            kind=requested,
            preset_bcm=preset_bcm,
            force=force,
            dry_run=dry_run,
            stats_from=stats_from,  # type: ignore[arg-type]
            shots=shots,
            progress=progress,
        )
    for message in result.warnings:
        output.warn(escape(message))
    output.emit_json(result.to_dict())
    folder = escape(str(result.folder))
    if result.up_to_date:
        output.result(f"{folder}: up to date ({result.kind}); nothing written")
    elif dry_run:
        output.result(
            f"would write {len(result.written)} files to {folder} ({result.kind}, from {result.kind_source}):"
        )
        if not quiet:
            for path in result.written:
                output.result(f"  {escape(str(path))}")
    else:
        extra = f", {len(result.reused)} reused" if result.reused else ""
        coverage = (
            f"; median object coverage {result.median_object_fraction:.1%}"
            if result.median_object_fraction is not None
            else ""
        )
        output.result(f"{folder}: {result.kind} prior, {len(result.written)} files written{extra}{coverage}")
