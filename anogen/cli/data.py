"""``anogen data check``: read a dataset tree, validate every file and show what training would use."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from anogen.cli._common import CategoryOpt, FormatOpt, JsonOpt, QuietOpt, epilog, make_output

app = typer.Typer(help="Inspect and validate dataset trees.", no_args_is_help=True)

ShotsOpt = Annotated[
    int | None,
    typer.Option("--shots", min=1, help="Training images per defect type (default: floor(N/3), at least 1)."),
]


@app.command(
    "check",
    epilog=epilog(
        "anogen data check /data/mvtec/bottle",
        "anogen data check /data/mvtec --category bottle --shots 5",
        "anogen data check /data/visa --category candle --json",
        "anogen data check ./my_product --format folder",
    ),
)
def check(
    data: Annotated[Path, typer.Argument(help="A category folder, or a dataset root with --category.")],
    category: CategoryOpt = None,
    dataset_format: FormatOpt = "auto",
    shots: ShotsOpt = None,
    json_output: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Validate a category and print a table per defect type: images, split, sizes, mask coverage, problems.

    Every problem is listed, one line each, naming the file. Exit code 2 if any is an error; warnings alone
    (converted images, binarised masks, ignored files) exit 0.
    """
    from anogen.config import choose_preset
    from anogen.data import read_category
    from anogen.data.check import check_category
    from anogen.data.model import Severity

    out = make_output(quiet=quiet, json_mode=json_output)
    with out.progress() as progress:
        category_read = read_category(data, category=category, dataset_format=dataset_format, progress=progress)
    report = check_category(category_read, shots=shots)
    cat = report.category
    choice = choose_preset(cat.dataset_format, cat.name, cat.kind)
    report.preset, report.preset_reason = choice.name, choice.reason
    out.emit_json(report.to_dict())

    size = cat.image_size
    kind = cat.kind.value if cat.kind is not None else "unknown kind"
    out.result(
        f"[bold]{escape(cat.name)}[/bold] ({cat.dataset_format}, {kind}) at {escape(str(cat.root))}\n"
        f"normal images: {len(cat.train_normals)} train, {len(cat.test_normals)} test; "
        f"image size {f'{size[0]}x{size[1]}' if size else '-'}{', grayscale' if cat.is_grayscale else ''}; "
        f"preset {report.preset} ({escape(choice.reason)})"
    )
    table = Table("defect type", "images", "train / held out", "sizes", "mean mask coverage", "problems")
    for row in report.rows:
        sizes = ", ".join(f"{w}x{h}" for w, h in row.sizes) or "-"
        coverage = f"{row.mean_coverage:.2%}" if row.mean_coverage is not None else "-"
        problems = []
        if row.errors:
            problems.append(f"[red]{row.errors} error{'s' if row.errors != 1 else ''}[/red]")
        if row.warnings:
            problems.append(f"[yellow]{row.warnings} warning{'s' if row.warnings != 1 else ''}[/yellow]")
        table.add_row(
            escape(row.name), str(row.images), f"{row.train} / {row.held_out}", sizes, coverage,
            ", ".join(problems) or "none",
        )
    out.table(table)

    for problem in report.problems:
        where = f"{problem.path}: " if problem.path is not None else ""
        if problem.severity is Severity.ERROR:
            out.error(escape(f"{where}{problem.message}"))
        elif not quiet:
            out.warn(escape(f"{where}{problem.message}"))
    n_err, n_warn = len(report.errors), len(report.warnings)
    if n_err:
        out.info(f"{n_err} error{'s' if n_err != 1 else ''}, {n_warn} warning{'s' if n_warn != 1 else ''}: "
                 "fix the errors before training")
        raise typer.Exit(2)
    out.info(f"ok: no errors, {n_warn} warning{'s' if n_warn != 1 else ''}")
