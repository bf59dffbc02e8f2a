"""``anogen demo`` (the README's first command) survives Ctrl-C: the same command continues where it stopped.

The demo runs as the user runs it, ``anogen demo`` in its own process (tiny backbone, few steps, small count);
SIGINT (what Ctrl-C sends) arrives once a fit checkpoint exists, then, on the rerun, once synth has written its
first manifest row. The third run of the same command must finish with a complete report, fits that went on
from their checkpoints (each training step logged exactly once), and no notice of starting over.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from anogen.records.manifest import read_rows

REPO = Path(__file__).resolve().parents[1]
STEPS = 4
COUNT = 1


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "COLUMNS")}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1")
    return env


def _command(out: Path) -> list[str]:
    return [sys.executable, "-m", "anogen", "demo", "--backbone", "tiny", "--steps", str(STEPS),
            "--count", str(COUNT), "--out", str(out)]


def _interrupt_when(out: Path, ready, what: str) -> subprocess.CompletedProcess:
    proc = subprocess.Popen(_command(out), env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and proc.poll() is None and not ready():
            time.sleep(0.05)
        assert proc.poll() is None, f"the demo ended before {what}: {proc.communicate()[1][-2000:]}"
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode != 0, "SIGINT did not stop the demo"
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


def _checkpoints(out: Path) -> list[Path]:
    return list((out / "runs").glob("object/*/checkpoints/step-*/state.json"))


def _synth_started(out: Path) -> bool:
    for manifest in (out / "synth").glob("object/*/manifest.jsonl"):
        try:
            if read_rows(manifest):
                return True
        except (OSError, ValueError):
            pass
    return False


def test_demo_interrupted_in_fit_and_in_synth_finishes_on_rerun(tmp_path: Path) -> None:
    out = tmp_path / "demo-out"
    _interrupt_when(out, lambda: bool(_checkpoints(out)), "a fit checkpoint existed")
    adapters = list((out / "runs").glob("object/*/adapter.json"))
    assert len(adapters) < 3, "every fit had finished: the interruption came too late"

    second = _interrupt_when(out, lambda: _synth_started(out), "synth started")
    assert "already holds a fit" not in second.stderr
    assert len(list((out / "runs").glob("object/*/adapter.json"))) == 3  # the fits were finished this time
    assert not (out / "report.html").exists()

    done = subprocess.run([*_command(out), "--json"], env=_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout)
    assert summary["notices"] == [] and "starting" not in done.stderr  # continued, not started over
    assert {f["status"] for f in summary["summary"]["fit"]} == {"complete"}

    for folder in sorted((out / "runs" / "object").iterdir()):
        record = json.loads((folder / "adapter.json").read_text())
        assert record["steps_done"] == STEPS, folder
        steps = [row["step"] for row in map(json.loads, (folder / "train_log.jsonl").read_text().splitlines())]
        assert steps == sorted(set(steps)) and steps[-1] == STEPS, (folder.name, steps)  # resumed, not repeated
    # .verify holds the category's normal model (the toy preset verifies samples: docs/verify.md)
    synth = sorted(p for p in (out / "synth" / "object").iterdir() if not p.name.startswith("."))
    assert len(synth) == 3
    assert (out / "synth" / "object" / ".verify" / "normal_model.json").is_file()
    for folder in synth:
        rows = read_rows(folder / "manifest.jsonl")
        assert [row["id"] for row in rows] == list(range(len(rows))), folder  # resumed: no attempt twice
        # finished: the count reached, or (the random tiny backbone) every allowed attempt made and recorded
        run = json.loads((folder / "run.json").read_text())
        assert sum(row["accepted"] for row in rows) >= COUNT or len(rows) == run["max_attempts"], folder
    exported = json.loads((out / "export-mvtec" / "export.json").read_text())
    assert exported  # the export finished (its record is written last)
    pngs = list((out / "export-mvtec").rglob("*.png"))
    assert [p for p in pngs if "good" in p.parts]  # the real normals, at least, are there
    report = (out / "report.html").read_text(encoding="utf-8")
    assert all(folder.name in report for folder in synth) and (out / "report.png").is_file()


def test_demo_rerun_with_other_settings_starts_over_with_one_notice(tmp_path: Path, monkeypatch) -> None:
    """Continuing is impossible when the settings differ: one line says so, then a clean run (no flag needed).

    The model stages are faked (the interrupted-run test above runs them for real); what is checked is what
    the demo does with the folder before them, and what the user reads.
    """
    import types

    from typer.testing import CliRunner

    import anogen.export
    import anogen.export.report
    import anogen.fit
    import anogen.model.backbone
    import anogen.synth
    from anogen.cli.app import app

    out = tmp_path / "demo-out"
    out.mkdir()
    (out / "demo.json").write_text(json.dumps({"schema_version": 1, "settings": {
        "seed": 0, "steps": STEPS, "backbone": "tiny"}}))
    stale = out / "runs" / "object" / "hole"
    stale.mkdir(parents=True)
    (stale / "adapter.json").write_text("{}")  # what the earlier run left: not resumable with other steps
    seen: dict = {}

    def fake_fit(category, config, runs, **kwargs):
        seen.update(stale_left=stale.exists(), steps=config.train.steps, resolution=config.train.resolution, **kwargs)
        return []

    monkeypatch.setattr(anogen.model.backbone, "load_backbone", lambda spec: object())
    monkeypatch.setattr(anogen.fit, "fit", fake_fit)
    monkeypatch.setattr(anogen.synth, "synthesize", lambda *a, **k: anogen.synth.SynthSummary())
    monkeypatch.setattr(anogen.synth, "remask", lambda *a, **k: None)
    monkeypatch.setattr(anogen.export, "export", lambda *a, **k: None)
    monkeypatch.setattr(anogen.export.report, "write_report", lambda *a, **k: types.SimpleNamespace())
    result = CliRunner().invoke(app, ["demo", "--backbone", "tiny", "--steps", str(STEPS + 2), "--out", str(out)])
    assert result.exit_code == 0, result.output
    lines = [line for line in result.stderr.splitlines() if "over" in line]
    assert len(lines) == 1 and f"steps {STEPS} -> {STEPS + 2}" in lines[0] and "starting it over" in lines[0]
    assert seen["stale_left"] is False and seen["resume"] is True and seen["steps"] == STEPS + 2
    # the rule of `anogen fit --backbone tiny`: the tiny backbone's native 32 px, not the toy preset's 64 px
    assert seen["resolution"] == 32
    assert json.loads((out / "demo.json").read_text())["settings"]["steps"] == STEPS + 2

    again = CliRunner().invoke(app, ["demo", "--backbone", "tiny", "--steps", str(STEPS + 2), "--out", str(out)])
    assert again.exit_code == 0 and "over" not in again.stderr  # the same settings: continued, no notice
