"""One export tree per folder (issue 18): an export refuses a folder holding another format's export."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

import anogen.export.writer as writer
from anogen.cli.app import app
from anogen.errors import InputError
from anogen.export import ExportConfig, export


def _tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_refuses_another_formats_export_and_stays_incremental(world: dict[str, Path]) -> None:
    out = world["tmp"] / "out"
    export([world["synth"]], ExportConfig(format="mvtec", out=out, data=world["data"]))
    before = _tree(out)
    for fmt, force in (("coco", False), ("folder", False), ("coco", True)):
        with pytest.raises(InputError, match="holds an export of format mvtec") as info:
            export([world["synth"]], ExportConfig(format=fmt, out=out, data=world["data"], force=force))
        assert "--format mvtec" in (info.value.hint or "") and "another --out" in (info.value.hint or "")
        assert _tree(out) == before  # nothing written, nothing removed
    again = export([world["synth"]], ExportConfig(format="mvtec", out=out, data=world["data"]))
    assert again.status == "up_to_date"


def test_cli_exit_2_with_one_line_naming_the_format(world: dict[str, Path]) -> None:
    out = world["tmp"] / "out"
    base = ["export", str(world["synth"]), "--data", str(world["data"]), "--out", str(out)]
    assert CliRunner().invoke(app, [*base, "--format", "coco"]).exit_code == 0
    dry = CliRunner().invoke(app, [*base, "--format", "mvtec", "--dry-run"])
    assert dry.exit_code == 2 and "format coco" in dry.output  # a dry run refuses what the real run refuses
    res = CliRunner().invoke(app, [*base, "--format", "mvtec"])
    assert res.exit_code == 2
    error_lines = [line for line in res.output.splitlines() if line.startswith("error")]
    assert len(error_lines) == 1 and "format coco" in error_lines[0], res.output
    assert not (out / "widget").exists()  # no MVTec files beside the COCO ones


def test_refuses_another_formats_interrupted_export(world: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    out = world["tmp"] / "out"
    real_write = writer.write_planned
    calls = {"n": 0}

    def crash_after_three(pf, dst_root, link, **kwargs):
        if calls["n"] == 3:
            raise KeyboardInterrupt
        calls["n"] += 1
        return real_write(pf, dst_root, link, **kwargs)

    monkeypatch.setattr(writer, "write_planned", crash_after_three)
    with pytest.raises(KeyboardInterrupt):
        export([world["synth"]], ExportConfig(format="folder", out=out, data=world["data"]))
    monkeypatch.setattr(writer, "write_planned", real_write)
    before = _tree(out)
    with pytest.raises(InputError, match="interrupted export of format folder"):
        export([world["synth"]], ExportConfig(format="visa", out=out, data=world["data"]))
    assert _tree(out) == before
    assert export([world["synth"]], ExportConfig(format="folder", out=out, data=world["data"])).status == "resumed"
