"""Option aliases shared by every command (after huggingface_hub's ``cli/_cli_utils.py``)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from anogen.cli._output import Output

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
