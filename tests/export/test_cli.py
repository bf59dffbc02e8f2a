"""`anogen export` and `anogen report` end to end through the CLI (exit codes, --json, --dry-run)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

from anogen.cli.app import app


def test_export_cli_json_and_rerun(world: dict[str, Path]) -> None:
    runner = CliRunner()
    out = world["tmp"] / "out"
    args = [
        "export",
        str(world["synth"]),
        "--data",
        str(world["data"]),
        "--format",
        "folder",
        "--out",
        str(out),
        "--json",
        "--quiet",
    ]
    first = runner.invoke(app, args)
    assert first.exit_code == 0, first.output
    payload = json.loads(first.stdout)
    assert payload["status"] == "written" and payload["counts"]["widget"]["abnormal"] == 7
    second = runner.invoke(app, args)
    assert json.loads(second.stdout)["status"] == "up_to_date"
    dry = runner.invoke(app, [*args[:-2], "--dry-run", "--json", "--out", str(world["tmp"] / "never")])
    assert dry.exit_code == 0 and json.loads(dry.stdout)["dry_run"] is True
    assert not (world["tmp"] / "never").exists()


def test_export_cli_usage_errors(world: dict[str, Path]) -> None:
    runner = CliRunner()
    res = runner.invoke(app, ["export", str(world["synth"]), "--format", "mvtec", "--out", str(world["tmp"] / "o")])
    assert res.exit_code == 2 and "--data" in res.output
    res = runner.invoke(
        app,
        [
            "export",
            str(world["synth"]),
            "--data",
            str(world["data"]),
            "--format",
            "yolo",
            "--out",
            str(world["tmp"] / "o"),
        ],
    )
    assert res.exit_code == 2 and "yolo" in res.output
    foreign = world["tmp"] / "foreign"
    foreign.mkdir()
    (foreign / "x.txt").write_text("x")
    res = runner.invoke(app, ["export", str(world["synth"]), "--data", str(world["data"]), "--out", str(foreign)])
    assert res.exit_code == 2 and "--force" in res.output


def test_report_cli(world: dict[str, Path]) -> None:
    res = CliRunner().invoke(app, ["report", str(world["synth"] / "widget"), "--json", "--max-per-defect", "3"])
    assert res.exit_code == 0, res.output
    payload = json.loads(res.stdout)
    assert Path(payload["html"]) == world["synth"] / "widget" / "report.html"
    assert {(d["defect"], d["accepted"], d["shown"]) for d in payload["defects"]} == {
        ("crack", 5, 4),
        ("scratch", 2, 3),
    }


def test_export_modules_do_not_import_torch() -> None:
    code = (
        "import sys, anogen.export, anogen.export.report, anogen.export.coco, anogen.export.mvtec, "
        "anogen.export.folder, anogen.export.visa, anogen.cli.export, anogen.cli.report; "
        "print('torch' in sys.modules)"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert res.stdout.strip() == "False"
