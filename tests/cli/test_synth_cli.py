"""``anogen synth`` / ``anogen mask`` through CliRunner: flags reach the library, bad input exits 2, and a real
end-to-end run on the tiny backbone (synth -> mask -> top-up, dry-run, exhausted attempts exit 1)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from anogen.cli.app import app
from anogen.model.backbone import build_tiny
from anogen.records.manifest import read_rows
from tests.test_sample import make_runs


def invoke(args: list) -> object:
    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    return make_runs(tmp_path_factory.mktemp("runs"), build_tiny(seed=0), perturb=0.3)


def test_flags_reach_the_library(tmp_path, monkeypatch):
    import anogen.synth

    seen = {}

    def fake(runs, out, request, **kwargs):
        seen.update(runs=runs, out=out, request=request, **kwargs)
        return anogen.synth.SynthSummary()

    monkeypatch.setattr(anogen.synth, "synthesize", fake)
    result = invoke([
        "synth", tmp_path / "runs", "--count", 7, "--out", tmp_path / "o", "--batch-size", 3, "--seed", 5,
        "--steps", 100, "--sampler", "pndm", "--guidance", 2.5, "--max-attempts", 20, "--threshold", "otsu",
        "--on-object-only", "--mixed-precision", "fp16", "--json",
    ])
    assert result.exit_code == 0, result.output
    request = seen["request"]
    assert request.preset is None and request.config_file is None  # each adapter's own configs + flags
    assert request.overrides["sample"] == {
        "count": 7, "batch_size": 3, "seed": 5, "steps": 100, "sampler": "pndm", "guidance": 2.5,
        "max_attempts": 20, "mixed_precision": "fp16",
    }
    assert request.overrides["mask"] == {"threshold": "otsu", "on_object_only": True}
    assert Path(seen["out"]) == tmp_path / "o" and callable(seen["progress"])
    assert json.loads(result.stdout)["defects"] == []


def test_no_on_object_only_switches_a_preset_value_off(tmp_path, monkeypatch):
    import anogen.synth

    seen = {}

    def fake(runs, out, request, **kwargs):
        seen.update(request=request)
        return anogen.synth.SynthSummary()

    monkeypatch.setattr(anogen.synth, "synthesize", fake)
    assert invoke(["synth", tmp_path, "--no-on-object-only", "--json"]).exit_code == 0
    assert seen["request"].overrides["mask"]["on_object_only"] is False
    recorded = {"mask": {"on_object_only": True}}
    assert seen["request"].resolve(recorded=recorded).mask.on_object_only is False
    assert invoke(["synth", tmp_path, "--json"]).exit_code == 0
    assert seen["request"].overrides["mask"]["on_object_only"] is None  # not given: the recorded value stays


@pytest.mark.parametrize("value", ["abc", "1.5", "-0.1"])
def test_bad_threshold_exits_2(tmp_path, value):
    result = invoke(["synth", tmp_path, "--count", 1, "--threshold", value])
    assert result.exit_code == 2
    assert "threshold" in result.output


def test_missing_runs_exits_2(tmp_path):
    result = invoke(["synth", tmp_path / "nope", "--count", 1, "--out", tmp_path / "o"])
    assert result.exit_code == 2 and "does not exist" in result.output


def test_end_to_end_synth_mask_top_up(runs, tmp_path):
    out = tmp_path / "synth"
    dry = invoke(["synth", runs, "--count", 3, "--out", out, "--dry-run", "--json"])
    assert dry.exit_code == 0, dry.output
    plan = json.loads(dry.stdout)["plan"][0]
    assert (plan["category"], plan["defect"], plan["to_generate"], plan["resolution"]) == ("bottle", "crack", 3, 32)
    assert not out.exists()  # nothing written

    result = invoke(["synth", runs, "--count", 3, "--out", out, "--batch-size", 2, "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["accepted"] == 3 and not summary["exhausted"]
    folder = out / "bottle" / "crack"
    assert len(list((folder / "image").glob("*.png"))) == summary["defects"][0]["attempts"]

    rows = read_rows(folder / "manifest.jsonl")
    areas = sorted(r["mask_area"] for r in rows if r["accepted"])
    limit = round((areas[-2] + areas[-1]) / 2, 6)  # rejects the largest mask
    remasked = invoke(["mask", out, "--max-area-fraction", limit, "--json"])
    assert remasked.exit_code == 0, remasked.output
    info = json.loads(remasked.stdout)["folders"][0]
    assert (info["accepted_before"], info["accepted_after"], info["needs_top_up"]) == (3, 2, True)
    rows = read_rows(folder / "manifest.jsonl")
    assert [r["reason"] for r in rows if not r["accepted"]] == ["mask_too_large"]
    assert json.loads((folder / "run.json").read_text())["mask"]["max_area_fraction"] == limit

    # the same synth command keeps the folder's new mask settings and tops up to 3 accepted
    again = invoke(["synth", runs, "--count", 3, "--out", out, "--max-attempts", 12, "--json"])
    assert again.exit_code == 0, again.output
    assert json.loads(again.stdout)["defects"][0]["accepted"] == 3
    rows = read_rows(folder / "manifest.jsonl")
    assert sum(r["accepted"] for r in rows) == 3
    assert all(r["mask_area"] <= limit for r in rows if r["accepted"])
    assert json.loads((folder / "run.json").read_text())["mask"]["max_area_fraction"] == limit


def test_exhausted_exits_1_and_keeps_results(runs, tmp_path):
    out = tmp_path / "synth"
    result = invoke(["synth", runs, "--count", 2, "--out", out, "--max-attempts", 2, "--threshold", "1.0"])
    assert result.exit_code == 1
    assert "max attempts" in result.output
    rows = read_rows(out / "bottle" / "crack" / "manifest.jsonl")
    assert [r["reason"] for r in rows] == ["empty_mask", "empty_mask"]
