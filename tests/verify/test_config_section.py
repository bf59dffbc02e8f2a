"""The ``verify:`` config section (issue 14 item 2, config part): presets, range checks, flags, run.json.

Independent expectations: every preset scores (the issue wants SD-1.x presets to score until validated on real data; the
toy presets score too until their thresholds are chosen on generated samples, docs/presets.md) and
that verification is off where no preset says otherwise (an adapter fitted before it existed keeps today's
behaviour); the thresholds' meaning fixes their ranges (an AUROC in [0, 1], non-negative ratios).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from anogen.cli.app import app
from anogen.config import SECTIONS, ConfigRequest, list_presets, resolve
from anogen.errors import InputError, PresetError
from anogen.model.backbone import build_tiny
from anogen.records import AdapterRecord
from anogen.verify.config import VerifyConfig
from tests.test_sample import make_runs


def test_one_class_for_the_section():
    assert SECTIONS["verify"] is VerifyConfig
    assert resolve().verify == VerifyConfig()
    assert resolve().verify.mode == "off"  # no preset: today's behaviour
    assert "verify" in resolve("toy/object").to_dict()


MEASURED = Path(__file__).resolve().parents[2] / "docs" / "verified.json"


@pytest.mark.parametrize("name", list_presets())
def test_preset_modes(name):
    verify = resolve(name).verify
    if name.startswith("toy/"):
        # The toy presets reject, with the thresholds bench.verified chose on seed-0 generated samples.
        chosen = json.loads(MEASURED.read_text())["kinds"][name.split("/")[1]]["chosen"]["thresholds"]
        assert verify == VerifyConfig(mode="reject", **chosen)
    else:
        # The SD presets only score until thresholds are validated on real data; their thresholds are the class's.
        assert verify == VerifyConfig(mode="score")


@pytest.mark.parametrize(
    ("values", "words"),
    [
        ({"alignment_min": 1.5}, "alignment_min"),
        ({"alignment_min": -0.1}, "alignment_min"),
        ({"background_max": -1.0}, "background_max"),
        ({"background_max": float("nan")}, "background_max"),
        ({"copy_min": -0.5}, "copy_min"),
    ],
)
def test_thresholds_out_of_range(values, words):
    with pytest.raises(InputError, match=words):
        resolve(overrides={"verify": values})


def test_bad_mode_and_unknown_key():
    with pytest.raises(PresetError, match="choose one of reject, score, off"):
        resolve(overrides={"verify": {"mode": "strict"}})
    with pytest.raises(PresetError, match="did you mean 'alignment_min'"):
        resolve(overrides={"verify": {"alignment_mn": 0.5}})


def test_job_settings_from_record_and_flags():
    from anogen.config import ConfigRequest
    from anogen.synth.jobs import job_configs

    recorded = {**VerifyConfig(mode="reject").to_dict(), "alignment_min": 0.6}
    record = AdapterRecord.from_dict({"config": {"verify": recorded}})
    flags = ConfigRequest(overrides={"verify": {"background_max": 2.0, "copy_min": None}})
    got = job_configs(record, flags).verify
    assert (got.mode, got.alignment_min, got.background_max, got.copy_min) == ("reject", 0.6, 2.0, 1.5)
    # An adapter fitted before verification existed records no section: off, as before.
    assert job_configs(AdapterRecord.from_dict({"config": {"sample": {}}}), ConfigRequest()).verify.mode == "off"
    # A whole VerifyConfig from Python replaces the recorded section, every field of it.
    got = job_configs(record, ConfigRequest(overrides={"verify": VerifyConfig(mode="off")})).verify
    assert (got.mode, got.alignment_min) == ("off", 0.75)


def test_run_json_records_the_section(tmp_path):
    from anogen.synth import synthesize

    runs = make_runs(tmp_path / "runs", build_tiny(seed=0), perturb=0.3)
    record_path = runs / "bottle" / "crack" / "adapter.json"
    record = json.loads(record_path.read_text())
    record["config"]["verify"] = {"mode": "off", "alignment_min": 0.6}
    record_path.write_text(json.dumps(record))
    synthesize(runs, tmp_path / "out", ConfigRequest(overrides={"sample": {"count": 1, "max_attempts": 1},
                                                  "verify": {"background_max": 2.5}}))
    run = json.loads((tmp_path / "out" / "bottle" / "crack" / "run.json").read_text())
    assert run["verify"] == VerifyConfig(mode="off", alignment_min=0.6, background_max=2.5).to_dict()


def _invoke(args: list) -> object:
    return CliRunner().invoke(app, [str(a) for a in args])


def test_cli_flags(tmp_path, monkeypatch):
    import anogen.synth

    seen = {}

    def fake(runs, out, request, **kwargs):
        seen.update(request=request)
        return anogen.synth.SynthSummary()

    monkeypatch.setattr(anogen.synth, "synthesize", fake)
    result = _invoke(["synth", tmp_path, "--verify", "Score", "--min-alignment", 0.8, "--max-background", 1.5,
                      "--min-copy-distance", 2, "--json"])
    assert result.exit_code == 0, result.output
    assert seen["request"].overrides["verify"] == {"mode": "score", "alignment_min": 0.8, "background_max": 1.5,
                                                   "copy_min": 2.0, "alignment_floor": None, "refine": None}
    _invoke(["synth", tmp_path, "--alignment-floor", 2, "--json"])
    assert seen["request"].overrides["verify"]["alignment_floor"] == 2.0
    _invoke(["synth", tmp_path, "--refine-mask", "--json"])
    assert seen["request"].overrides["verify"]["refine"] is True
    assert seen["request"].preset is None  # no --preset: each adapter's recorded section is the base
    _invoke(["synth", tmp_path, "--preset", "mvtec/bottle", "--json"])
    assert seen["request"].preset == "mvtec/bottle"
    assert seen["request"].resolve().verify == VerifyConfig(mode="score")


@pytest.mark.parametrize(("flags", "words"), [
    (["--verify", "strict"], "choose one of reject, score, off"),
    (["--min-alignment", "1.2"], "must lie in [0, 1]"),
    (["--max-background", "-1"], "must be >= 0"),
])
def test_cli_bad_values_exit_2(tmp_path, flags, words):
    runs = make_runs(tmp_path / "runs", build_tiny(seed=0))
    result = _invoke(["synth", runs, "--out", tmp_path / "out", "--dry-run", *flags])
    assert result.exit_code == 2, result.output
    assert words in " ".join(result.output.split())
    assert not (tmp_path / "out").exists()
