"""Option aliases shared by every command (after huggingface_hub's ``cli/_cli_utils.py``), and the parsers and
helpers more than one command uses: no command module imports another."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import typer
from rich.markup import escape

from anogen.cli._output import Output
from anogen.errors import InputError

QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="Only results and errors.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print a machine-readable JSON summary on stdout.")]
SeedOpt = Annotated[int | None, typer.Option("--seed", help="Seed of every random choice (default: preset's).")]
DryRunOpt = Annotated[
    bool, typer.Option("--dry-run", help="Validate inputs and print the plan; load no model, write nothing.")
]
PresetOpt = Annotated[
    str | None, typer.Option("--preset", help="Preset name, e.g. mvtec/bottle (see `anogen presets list`).")
]
RecipeOpt = Annotated[
    str | None,
    typer.Option(
        "--recipe",
        help="reference | fast: recipe over an SD-1.x preset (default: the preset's own, reference). "
        "See docs/presets.md.",
    ),
]
ConfigOpt = Annotated[
    Path | None,
    typer.Option("--config", help="YAML file with preset sections; overrides the preset, flags override it."),
]
BackboneOpt = Annotated[
    str | None, typer.Option("--backbone", help="tiny | toy | a local diffusers folder | a hub id.")
]
CategoryOpt = Annotated[
    str | None, typer.Option("--category", help="Category name when DATA is a dataset root.")
]
FormatOpt = Annotated[
    str, typer.Option("--format", help="Dataset layout: auto | mvtec | mvtec2 | visa | folder.")
]


def make_output(quiet: bool = False, json_mode: bool = False) -> Output:
    return Output(quiet=quiet, json_mode=json_mode)


def epilog(*examples: str) -> str:
    """An ``--help`` epilog listing examples, one per line."""
    lines = "\n\n".join(f"  $ {example}" for example in examples)
    return f"Examples:\n\n{lines}"


def format_duration(seconds: float) -> str:
    """A time estimate in the unit a reader takes in at a glance: seconds, minutes or hours."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


# Mask settings, shared by `synth` and `mask`.
MaskThresholdOpt = Annotated[
    str | None,
    typer.Option("--threshold", help="Mask threshold: distance from grey on a 0-1 scale (e.g. 0.12), or otsu."),
]
OnObjectOpt = Annotated[
    bool | None,
    typer.Option(
        "--on-object-only/--no-on-object-only",
        help="Reject masks lying mostly off the object (needs a prior).",
    ),
]


def parse_mask_threshold(value: str | None) -> float | Literal["otsu"] | None:
    """``--threshold`` of ``synth`` and ``mask``: ``"otsu"`` or a number (a distance from grey; ``MaskConfig``
    checks that it lies in [0, 1]); ``None`` when the flag was not given."""
    if value is None:
        return None
    if value.strip().lower() == "otsu":
        return "otsu"
    try:
        return float(value)
    except ValueError:
        raise InputError(f"--threshold takes a number in [0, 1] or otsu (got {value!r})") from None


def parse_object_threshold(text: str) -> float | Literal["otsu"]:
    """``--threshold`` of ``prior``: ``"otsu"`` or a positive number of background standard deviations."""
    if text.strip().lower() == "otsu":
        return "otsu"
    try:
        value = float(text)
    except ValueError:
        raise InputError(f"--threshold must be a number or 'otsu', not {text!r}") from None
    if value <= 0:
        raise InputError(f"--threshold must be positive, got {value}")
    return value


# Verification thresholds, shared by `synth` and `verify`.
MinAlignmentOpt = Annotated[
    float | None,
    typer.Option("--min-alignment", help="Least alignment (AUROC of the anomaly map against the mask, 0-1; "
                 "0.5 is chance) of an accepted sample; below it: misaligned."),
]
MaxBackgroundOpt = Annotated[
    float | None,
    typer.Option("--max-background", help="Most anomalous score allowed outside the mask, in normal units "
                 "(1.0: a held-out normal's 95th-percentile peak); above it: background."),
]
MinCopyOpt = Annotated[
    float | None,
    typer.Option("--min-copy-distance", help="Least distance to the nearest training shot, in units of the "
                 "backbone's own round-trip error; below it: copy."),
]


AlignmentFloorOpt = Annotated[
    float | None,
    typer.Option("--alignment-floor", help="How anomalous (normal units) a pixel must be to count in alignment: "
                 "below it every pixel ties, so a mask over a faint anomaly does not align."),
]


def verify_overrides(
    mode: str | None,
    min_alignment: float | None,
    max_background: float | None,
    min_copy_distance: float | None,
    alignment_floor: float | None = None,
) -> dict[str, Any]:
    """The ``verify`` config section the verification flags of ``synth`` and ``verify`` set (None: not given)."""
    return {
        "mode": mode.strip().lower() if mode is not None else None,
        "alignment_min": min_alignment,
        "alignment_floor": alignment_floor,
        "background_max": max_background,
        "copy_min": min_copy_distance,
    }


def warn_top_up(output: Output, folders: list[dict[str, Any]]) -> None:
    """After ``mask`` or ``verify``: name the folders left short of their count, which a synth rerun tops up."""
    short = [f["folder"] for f in folders if f["needs_top_up"]]
    if short:
        output.warn(escape(f"fewer than count accepted in {', '.join(short)}: rerun the same `anogen synth` to top up"))
