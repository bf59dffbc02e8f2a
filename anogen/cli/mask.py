"""Re-threshold the part images of a synth output into new masks, without regenerating anything.

Masks, ``manifest.jsonl`` (accepted / reason / mask_area) and ``run.json`` are rewritten atomically. If fewer than
``count`` samples remain accepted, rerun the same ``anogen synth`` command: it tops the folder up. See docs/synth.md.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from anogen.cli._common import (
    JsonOpt,
    MaskThresholdOpt,
    OnObjectOpt,
    QuietOpt,
    epilog,
    make_output,
    parse_mask_threshold,
    warn_top_up,
)

EPILOG = epilog(
    "anogen mask synth --threshold otsu",
    "anogen mask synth/bottle/crack --threshold 0.2 --min-area 32",
    "anogen mask synth --max-area-fraction 0.3 --json",
)


def mask_command(
    synth: Annotated[Path, typer.Argument(help="Synth output: the root, a category folder or a defect folder.")],
    threshold: MaskThresholdOpt = None,
    blur_sigma: Annotated[float | None, typer.Option("--blur-sigma", help="Gaussian smoothing (pixels).")] = None,
    open_radius: Annotated[int | None, typer.Option("--open-radius", help="Opening radius (pixels).")] = None,
    close_radius: Annotated[int | None, typer.Option("--close-radius", help="Closing radius (pixels).")] = None,
    min_area: Annotated[int | None, typer.Option("--min-area", help="Smallest component kept (pixels).")] = None,
    max_area_fraction: Annotated[
        float | None, typer.Option("--max-area-fraction", help="Reject masks covering more of the image.")
    ] = None,
    on_object_only: OnObjectOpt = None,
    json_output: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Re-threshold part images into masks with new settings (unchanged settings keep the folder's own)."""
    from anogen.synth import remask

    out_ = make_output(quiet=quiet, json_mode=json_output)
    overrides: dict[str, Any] = {
        "threshold": parse_mask_threshold(threshold),
        "blur_sigma": blur_sigma,
        "open_radius": open_radius,
        "close_radius": close_radius,
        "min_area": min_area,
        "max_area_fraction": max_area_fraction,
        "on_object_only": on_object_only,
    }
    with out_.progress() as display:
        summary = remask(synth, overrides=overrides, progress=display)
    out_.emit_json({"folders": summary.folders})
    table = Table("folder", "attempts", "accepted before", "accepted after", "count")
    for f in summary.folders:
        table.add_row(
            escape(f["folder"]), str(f["attempts"]), str(f["accepted_before"]), str(f["accepted_after"]),
            str(f["count"]),
        )
    out_.table(table)
    warn_top_up(out_, summary.folders)
