"""Score the samples of an existing synth output and re-judge its accepted set, without regenerating anything.

``manifest.jsonl`` (accepted / reason / verify) and ``run.json`` (verify) are rewritten atomically; a second run
is a no-op. If fewer than ``count`` samples remain accepted, rerun the same ``anogen synth`` command: it tops the
folder up with these thresholds. See docs/verify.md.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from anogen.cli._common import (
    AlignmentFloorOpt,
    JsonOpt,
    MaxBackgroundOpt,
    MinAlignmentOpt,
    MinCopyOpt,
    QuietOpt,
    epilog,
    make_output,
    verify_overrides,
    warn_top_up,
)

EPILOG = epilog(
    "anogen verify synth",
    "anogen verify synth/bottle/crack --min-alignment 0.8 --max-background 1.5",
    "anogen verify synth --mode score --json",
)


def verify_command(
    synth: Annotated[Path, typer.Argument(help="Synth output: the root, a category folder or a defect folder.")],
    mode: Annotated[
        str | None,
        typer.Option("--mode", help="reject (failing samples leave the accepted set) or score (record the scores "
                     "only). Default: the folder's own mode, reject for a folder made without verification."),
    ] = None,
    min_alignment: MinAlignmentOpt = None,
    max_background: MaxBackgroundOpt = None,
    min_copy_distance: MinCopyOpt = None,
    alignment_floor: AlignmentFloorOpt = None,
    json_output: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Score a synth output's samples against the category's normals and re-judge them with these thresholds."""
    from anogen.verify.rescore import verify_output

    out_ = make_output(quiet=quiet, json_mode=json_output)
    overrides = verify_overrides(mode, min_alignment, max_background, min_copy_distance, alignment_floor)
    with out_.progress() as display:
        summary = verify_output(synth, overrides=overrides, progress=display)
    out_.emit_json({"folders": summary.folders})
    table = Table("folder", "attempts", "scored now", "accepted before", "accepted after", "count", "rejected")
    for f in summary.folders:
        rejected = ", ".join(f"{k} {v}" for k, v in f["rejected"].items()) or "0"
        table.add_row(
            escape(f["folder"]), str(f["attempts"]), str(f["scored"]), str(f["accepted_before"]),
            str(f["accepted_after"]), str(f["count"]), escape(rejected),
        )
    out_.table(table)
    warn_top_up(out_, summary.folders)
