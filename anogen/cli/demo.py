"""``anogen demo``: the whole pipeline on the built-in toy data set, on the CPU."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from anogen.cli._common import JsonOpt, QuietOpt, epilog, make_output

EPILOG = epilog("anogen demo", "anogen demo --out /tmp/anogen-demo --count 64", "anogen demo --backbone tiny --steps 5")


def demo(
    out: Annotated[Path, typer.Option("--out", help="Folder for every output of the demo.")] = Path("demo-out"),
    count: Annotated[int, typer.Option("--count", min=1, help="Accepted samples per defect type.")] = 24,
    steps: Annotated[
        int | None, typer.Option("--steps", min=1, help="Training steps per defect type (default: the preset's).")
    ] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the data, training and sampling.")] = 0,
    backbone: Annotated[
        str, typer.Option("--backbone", help="toy (the shipped model) or tiny (random; a fast plumbing check).")
    ] = "toy",
    json_output: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Run make-data, prior, fit, synth, mask, export and report on the toy data set (CPU, minutes).

    The same command again (after Ctrl-C, say) continues where it stopped: fits resume from their checkpoints,
    synth resumes, export and report are rebuilt. Other --seed/--steps/--backbone start the folder over.
    """
    from anogen.demo import DemoConfig, run_demo

    output = make_output(quiet=quiet, json_mode=json_output)
    config = DemoConfig(out=out, seed=seed, count=count, steps=steps, backbone=backbone)
    with output.progress() as display:
        result = run_demo(
            config,
            progress=display,
            on_stage=lambda name: output.info(f"[bold]{name}[/bold]"),
            on_notice=lambda text: output.warn(escape(text)),
        )
    output.emit_json(result.to_dict())
    table = Table("stage", "seconds", "output")
    stage_paths = {"data": "data", "prior": "prior", "fit": "runs", "synth": "synth", "export": "export"}
    for stage, seconds in result.timings.items():
        where = result.paths.get(stage_paths.get(stage, stage), "")
        table.add_row(stage, f"{seconds:.1f}", str(where))
    output.table(table)
    report = result.paths["report"]
    output.result(f"Report: {report.resolve()}  (open it in a browser; contact sheet: {report.with_suffix('.png')})")
    output.result(f"MVTec AD tree: {result.paths['export'].resolve()}")
