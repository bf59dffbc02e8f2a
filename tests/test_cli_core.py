"""The CLI core through CliRunner: --version, env, presets, exit codes, debug switch, lazy imports."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from anogen.cli.app import app
from anogen.config import list_presets

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()


def test_version_matches_pyproject() -> None:
    # tomllib is 3.11+; the [project] version line is simple enough to read directly.
    text = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    expected = re.search(r'^version = "([^"]+)"', text, re.MULTILINE).group(1)
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.stdout.strip() == f"anogen {expected}"


def test_env_json_reports_versions_and_devices() -> None:
    import torch

    result = runner.invoke(app, ["env", "--json"])
    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout)
    assert info["torch"].split("+")[0] == torch.__version__.split("+")[0]
    assert info["python"] == ".".join(map(str, sys.version_info[:3]))
    assert info["cuda_available"] == torch.cuda.is_available()
    assert len(info["cuda_devices"]) == torch.cuda.device_count()
    for key in ("diffusers", "transformers", "accelerate", "hf_cache", "anogen_cache"):
        assert key in info
    table = runner.invoke(app, ["env"])
    assert table.exit_code == 0 and "diffusers" in table.stdout


def test_presets_list_shows_every_preset() -> None:
    result = runner.invoke(app, ["presets", "list"])
    assert result.exit_code == 0
    for name in list_presets():
        assert name in result.stdout
    rows = json.loads(runner.invoke(app, ["presets", "list", "--json"]).stdout)
    assert [row["name"] for row in rows] == list_presets()
    assert "mvtec/bottle" in [row["name"] for row in rows]


def test_presets_show() -> None:
    result = runner.invoke(app, ["presets", "show", "mvtec/wood"])
    assert result.exit_code == 0
    shown = yaml.safe_load(result.stdout)
    assert shown["adapter"]["bcm"] is False and shown["preset"] == "mvtec/wood"
    assert shown["train"]["flips"] == ["horizontal", "vertical"]
    payload = json.loads(runner.invoke(app, ["presets", "show", "visa/pcb1", "--json"]).stdout)
    assert payload["train"]["flips"] == [] and payload["description"].startswith("VisA pcb1")


def test_unknown_preset_is_a_one_line_usage_error() -> None:
    result = runner.invoke(app, ["presets", "show", "mvtec/botle"])
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert lines[0] == "error: unknown preset 'mvtec/botle'"
    assert lines[1].startswith("hint: did you mean mvtec/bottle")
    assert "Traceback" not in result.output


def test_usage_errors_exit_2() -> None:
    assert runner.invoke(app, ["no-such-command"]).exit_code == 2
    assert runner.invoke(app, ["data", "check"]).exit_code == 2  # missing argument
    assert runner.invoke(app, ["data", "check", ".", "--shots", "0"]).exit_code == 2


def test_unexpected_error_exits_1_and_debug_shows_it(monkeypatch: pytest.MonkeyPatch) -> None:
    def boom() -> list[str]:
        raise RuntimeError("disk on fire")

    monkeypatch.setattr("anogen.cli.presets.list_presets", boom)
    result = runner.invoke(app, ["presets", "list"])
    assert result.exit_code == 1
    assert "error: unexpected RuntimeError: disk on fire" in result.stderr
    assert "--debug" in result.stderr and "Traceback" not in result.output
    debug = runner.invoke(app, ["--debug", "presets", "list"])
    assert isinstance(debug.exception, RuntimeError)
    monkeypatch.setenv("ANOGEN_DEBUG", "1")
    assert isinstance(runner.invoke(app, ["presets", "list"]).exception, RuntimeError)


def test_known_error_with_debug_raises_the_typed_error(tmp_path: Path) -> None:
    from anogen.errors import DataError

    result = runner.invoke(app, ["--debug", "data", "check", str(tmp_path / "missing")])
    assert isinstance(result.exception, DataError)


def test_cli_import_and_help_leave_heavy_modules_out() -> None:
    code = (
        "import sys\n"
        "from typer.testing import CliRunner\n"
        "import anogen.cli.app as m\n"
        "assert 'torch' not in sys.modules, 'import'\n"
        "for args in (['--help'], ['data', 'check', '--help'], ['presets', 'list']):\n"
        "    r = CliRunner().invoke(m.app, args)\n"
        "    assert r.exit_code == 0, (args, r.output)\n"
        "heavy = sorted(n for n in ('torch', 'diffusers', 'transformers', 'accelerate', 'scipy') if n in sys.modules)\n"
        "print(heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
