"""``anogen export``: write synth output plus the real category as a tree detectors read directly."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from anogen.cli._common import CategoryOpt, DryRunOpt, JsonOpt, QuietOpt, epilog, make_output

EPILOG = epilog(
    "anogen export synth/ --data /data/mvtec/bottle --format mvtec --out export/mvtec",
    "anogen export synth/bottle --data /data/mvtec --category bottle --format coco --out export/coco",
    "anogen export synth/ --data /data/mvtec/bottle --format folder --out export/folder --link hardlink",
    "anogen export synth/ --data /data/mvtec/bottle --format mvtec --out export/mvtec --include-real-test --size 256",
)


def export_command(
    synth: Annotated[list[Path], typer.Argument(help="Synth output folders (root, category or defect folders).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Export folder (created; must be empty or ours).")],
    data: Annotated[
        Path | None,
        typer.Option("--data", help="The real data set (category folder or root); required except for coco."),
    ] = None,
    export_format: Annotated[
        str, typer.Option("--format", "-f", help="Layout to write: mvtec | coco | folder | visa.")
    ] = "mvtec",
    data_format: Annotated[
        str, typer.Option("--data-format", help="Layout of --data: auto | mvtec | mvtec2 | visa | folder.")
    ] = "auto",
    category: CategoryOpt = None,
    size: Annotated[
        str,
        typer.Option("--size", help="Output image size: source (the real images'), native (as generated) or PX."),
    ] = "source",
    link: Annotated[
        str,
        typer.Option(
            "--link", help="copy | hardlink | symlink for files needing no conversion (hardlink falls back to copy)."
        ),
    ] = "copy",
    include_real_test: Annotated[
        bool,
        typer.Option("--include-real-test", help="Add the real held-out anomalies (never the training shots)."),
    ] = False,
    coco_per_mask: Annotated[
        bool, typer.Option("--coco-per-mask", help="COCO: one annotation per mask, not per connected component.")
    ] = False,
    force: Annotated[
        bool, typer.Option("--force", help="Rebuild even if up to date; write into a non-empty foreign folder.")
    ] = False,
    dry_run: DryRunOpt = False,
    json_output: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Export accepted synthetic samples (and the real normals) as MVTec AD, COCO, anomalib Folder or VisA.

    Images are resized to the real category's size by default (masks nearest-neighbour, 0/255), every folder is
    renumbered with fixed-width stems, and export.json + export_manifest.jsonl map each file to its source.
    Re-running with the same inputs does nothing; an interrupted export resumes.
    """
    from anogen.export import ExportConfig, ExportPlan, export, parse_size

    output = make_output(quiet=quiet, json_mode=json_output)
    config = ExportConfig(
        format=export_format,
        out=out,
        data=data,
        data_format=data_format,
        category=category,
        size=parse_size(size),
        link=link,
        force=force,
        include_real_test=include_real_test,
        coco_per_mask=coco_per_mask,
    )
    if dry_run:
        plan = export(synth, config, dry_run=True)
        assert isinstance(plan, ExportPlan)
        payload = {
            "format": plan.format,
            "out": str(out),
            "files": len(plan.files) + len(plan.generated),
            "counts": plan.summary,
            "dry_run": True,
        }
        output.emit_json(payload)
        output.result(f"would write {payload['files']} files into {escape(str(out))}")
        _counts_table(output, plan.summary)
        return
    with output.progress() as progress:
        result = export(synth, config, progress=progress)
    output.emit_json(result.to_dict())
    if result.status == "up_to_date":
        output.result(f"{escape(str(result.out))} is up to date ({result.files} files); nothing to do")
        return
    verb = "resumed and finished" if result.status == "resumed" else "wrote"
    output.result(
        f"{verb} {escape(str(result.out))}: {result.files} files ({result.written} written, {result.reused} kept, "
        f"{result.removed} stale removed)"
    )
    if not quiet:
        _counts_table(output, result.counts)


def _counts_table(output, counts: dict) -> None:
    table = Table("category", "folder", "files")
    for cat, per in counts.items():
        for key, value in per.items():
            table.add_row(escape(str(cat)), escape(str(key)), str(value))
    output.table(table)
