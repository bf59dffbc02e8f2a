"""``anogen report``: an HTML page and a PNG contact sheet to judge a synth run at a glance."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from anogen.cli._common import JsonOpt, QuietOpt, epilog, make_output

EPILOG = epilog(
    "anogen report synth/",
    "anogen report synth/bottle/crack --out crack.html --max-per-defect 48",
    "anogen report synth/ --json",
)


def report_command(
    synth: Annotated[list[Path], typer.Argument(help="Synth output folders (root, category or defect folders).")],
    out: Annotated[
        Path | None,
        typer.Option("--out", "-o", help="HTML file (default: SYNTH/report.html); the PNG sheet goes beside it."),
    ] = None,
    max_per_defect: Annotated[
        int, typer.Option("--max-per-defect", min=1, help="Accepted samples shown per defect type.")
    ] = 24,
    json_output: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Write a self-contained HTML report (thumbnails embedded) and a PNG contact sheet of synth output.

    Per defect type: image | part | mask overlay grid, accepted/rejected counts with reasons, a mask-area
    histogram, seeds and adapter info. Open the page in any browser; no server needed.
    """
    from anogen.export.report import write_report

    output = make_output(quiet=quiet, json_mode=json_output)
    result = write_report(synth, out, max_per_defect=max_per_defect)
    output.emit_json(result.to_dict())
    output.result(f"wrote {escape(str(result.html))} and {escape(str(result.png))}")
    for d in result.defects:
        output.info(
            escape(f"{d.category}/{d.defect}: {d.accepted} accepted of {d.attempts} attempts, {d.selected} selected")
        )
