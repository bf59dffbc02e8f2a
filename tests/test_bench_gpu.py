"""``python -m bench.gpu``: the smoke run on CPU writes its report and checks every output finite; missing
dependencies come from a folder of wheels, installed offline into a temporary folder."""

from __future__ import annotations

import json
import sys
import zipfile
from pathlib import Path

import pytest

from bench import gpu


def test_smoke_run_writes_its_report(tmp_path):
    docs_before = gpu.DOCS_FILE.read_text(encoding="utf-8") if gpu.DOCS_FILE.exists() else None
    data = gpu.main(["--smoke", "--out", str(tmp_path / "out"), "--budget-s", "600"])
    files = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert files == ["benchmarks-gpu.md", "gpu.json", "progress.log"]  # at most 8 files, by design 3
    saved = json.loads((tmp_path / "out" / "gpu.json").read_text())
    assert saved["complete"] is True and saved["smoke"] is True
    fit = {(r["recipe"], r["precision"], r["checkpointing"]) for r in saved["fit"]}
    assert fit == {(r, p, c) for r in ("reference", "fast") for p in ("fp32", "bf16") for c in (False, True)}
    assert {(r["recipe"], r["bcm"]) for r in saved["synth"]} == {(r, b) for r in ("reference", "fast")
                                                                 for b in (True, False)}
    for row in saved["fit"] + saved["synth"]:
        assert row["finite"] is True
    for row in saved["fit"]:
        assert row["s_per_step"] > 0 and row["estimate_mib"] > 0 and row["unet_tflop_per_step"] > 0
    reference_bcm = next(r for r in saved["synth"] if r["recipe"] == "reference" and r["bcm"])
    assert (reference_bcm["sampler"], reference_bcm["guidance"]) == ("pndm", 2.0)
    assert reference_bcm["anogen_s_per_pair"] > 0 and reference_bcm["pipeline_s_per_pair"] > 0
    # TFLOP per pair: rows (whole, part, BCM reference) x 2 for guidance x steps x one row's TFLOP
    assert reference_bcm["tflop_per_pair"] == pytest.approx(6 * 2 * saved["unet_tflop_per_row"])
    report = (tmp_path / "out" / "benchmarks-gpu.md").read_text()
    assert "smoke run" in report and report.count("| reference |") == 6 and data["fit"] == saved["fit"]
    after = gpu.DOCS_FILE.read_text(encoding="utf-8") if gpu.DOCS_FILE.exists() else None
    assert after == docs_before  # a smoke run never touches docs/benchmarks-gpu.md


def _wheel(folder: Path, name: str) -> Path:
    """A minimal pure-Python wheel holding one module that records it was imported from the wheel."""
    path = folder / f"{name}-0.1-py3-none-any.whl"
    dist = f"{name}-0.1.dist-info"
    files = {
        f"{name}/__init__.py": "FROM_WHEEL = True\n",
        f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n",
        f"{dist}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = "".join(f"{k},,\n" for k in files) + f"{dist}/RECORD,,\n"
    with zipfile.ZipFile(path, "w") as zf:
        for key, text in files.items():
            zf.writestr(key, text)
        zf.writestr(f"{dist}/RECORD", record)
    return path


def test_missing_dependencies_come_from_the_wheels_folder(tmp_path, monkeypatch):
    name = "anogen_bench_fake_dep"
    monkeypatch.setattr(gpu, "NEEDED", (*gpu.NEEDED, name))
    with pytest.raises(SystemExit, match=f"missing {name}"):
        gpu.ensure_dependencies(tmp_path / "none")
    _wheel(tmp_path, name)
    monkeypatch.setattr(sys, "path", list(sys.path))
    where = gpu.ensure_dependencies(tmp_path)
    assert str(tmp_path) in where
    module = __import__(name)
    assert module.FROM_WHEEL is True
    sys.modules.pop(name, None)
