"""CLI edges a careful user hits (issues 18.3, 18.5, 16.4): a dry run stops on exactly the real run's errors, a
backbone and a preset that do not fit train at the backbone's size, and the small messages say what they mean."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from anogen.cli.app import app
from anogen.model.backbone import build_tiny
from tests.test_sample import make_runs
from tests.test_train import write_toy_category

FIT = ["--bcm", "off", "--rank", "4", "--steps", "2", "--validate-every", "0"]


def invoke(args: list):
    return CliRunner().invoke(app, [str(a) for a in args])


def error_lines(result) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.startswith(("error:", "hint:"))]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return write_toy_category(tmp_path_factory.mktemp("edges-data"), defects=("stain",))


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    return make_runs(tmp_path_factory.mktemp("edges-runs"), build_tiny(seed=0), perturb=0.3)


def assert_same_error(args: list, out: Path, expected: str) -> None:
    """The dry run and the real run exit 2 with the same error and hint, and the real run wrote nothing."""
    dry = invoke([*args, "--dry-run"])
    real = invoke(args)
    assert dry.exit_code == 2, (args, dry.output)
    assert real.exit_code == 2, (args, real.output)
    assert error_lines(dry) == error_lines(real), (dry.stderr, real.stderr)
    assert expected in " ".join(error_lines(real)), real.stderr
    assert "Traceback" not in real.output
    assert not out.exists()


def test_fit_dry_run_stops_on_the_real_runs_errors(data, tmp_path):
    out = tmp_path / "runs"
    base = ["fit", data, *FIT, "--out", out]
    assert_same_error([*base, "--backbone", "toyy"], out, "did you mean toy?")
    assert_same_error([*base, "--backbone", tmp_path / "models" / "sd15"], out, "does not exist")
    # a misspelt preset (BCM without --prior is no longer an error: fit builds the prior, issue 16.3)
    assert_same_error([*base, "--backbone", "tiny", "--preset", "mvtec/botle"], out, "mvtec/botle")
    # a resolution the backbone cannot take
    assert_same_error([*base, "--backbone", "toy", "--resolution", "60"], out, "not a multiple of 16")


def test_synth_dry_run_stops_on_the_real_runs_errors(runs, tmp_path):
    out = tmp_path / "synth"
    args = ["synth", runs, "--count", "1", "--steps", "2", "--out", out]
    assert_same_error([*args, "--sampler", "foo"], out, "unknown sampler 'foo'")
    text = " ".join(error_lines(invoke([*args, "--sampler", "foo"])))
    assert "choose one of dpmsolver++, sde-dpmsolver++, ddpm, ddim, euler, pndm" in text and "Literal" not in text
    # an adapter whose backbone folder has gone: the real run fails on loading it, the dry run must too
    moved = make_runs(tmp_path / "moved", build_tiny(seed=0))
    record_path = moved / "bottle" / "crack" / "adapter.json"
    record = json.loads(record_path.read_text())
    record["backbone"]["source"] = str(tmp_path / "gone" / "backbone")
    record_path.write_text(json.dumps(record))
    assert_same_error(["synth", moved, "--count", "1", "--out", out], out, "does not exist")


def test_count_zero_is_refused(runs, tmp_path):
    result = invoke(["synth", runs, "--count", "0", "--out", tmp_path / "o"])
    assert result.exit_code == 2, result.output
    assert "sample.count (--count) = 0 asks for no samples" in result.stderr
    assert not (tmp_path / "o").exists()


def test_synth_help_says_where_the_default_count_comes_from():
    result = CliRunner().invoke(app, ["synth", "--help"], env={"COLUMNS": "200"})
    text = " ".join(result.output.split())
    assert "Accepted samples per defect type (default: sample.count recorded in each adapter" in text
    assert "1000 for mvtec/, visa/ and generic/ presets, 16 for toy/" in text


def test_format_visa_on_another_layout_says_what_a_visa_root_holds(data):
    result = invoke(["data", "check", data, "--format", "visa"])
    assert result.exit_code == 2
    text = " ".join(error_lines(result))
    assert "neither a visa category folder nor a visa dataset root" in text
    assert "split_csv/1cls.csv" in text and "Data/Images/Normal" in text
    # the root above it holds an MVTec-style category: not offered as a VisA object either
    result = invoke(["data", "check", data.parent, "--format", "visa"])
    assert "split_csv/1cls.csv" in " ".join(error_lines(result)) and "widget" not in result.stderr


def test_validation_notice_once_and_not_for_toy_presets(data, tmp_path):
    toy = tmp_path / "toy"
    made = invoke(["toy", "make", toy, "--kind", "object", "--n-train", "6", "--n-per-defect", "3", "--quiet"])
    assert made.exit_code == 0, made.output
    result = invoke(["fit", toy / "object", "--bcm", "off", "--dry-run", "--out", tmp_path / "r"])
    assert result.exit_code == 0, result.output
    assert "preset toy/object" in result.stderr and "not yet validated" not in result.stderr
    result = invoke(["fit", data, *FIT, "--backbone", "tiny", "--dry-run", "--out", tmp_path / "r"])
    assert result.exit_code == 0, result.output
    assert result.stderr.count("values not yet validated on real data") == 1, result.stderr


def test_tiny_and_toy_backbones_train_at_their_size_with_an_sd_preset(data, tmp_path, monkeypatch):
    """Issue 16.4: --backbone tiny/toy with an SD-1.x preset (512 px) train at the backbone's native size, say so
    in one line, and the dry run shows that resolution with its memory and time estimates."""
    base = ["fit", data, *FIT, "--preset", "generic/object", "--out", tmp_path / "r"]
    for backbone, native in (("tiny", 32), ("toy", 64)):
        result = invoke([*base, "--backbone", backbone, "--dry-run", "--json"])
        assert result.exit_code == 0, result.output
        plan = json.loads(result.stdout)["plan"]
        assert plan["resolution"] == native and plan["native_resolution"] == native
        assert plan["estimated_peak_bytes"] and plan["estimated_seconds"] is not None
        warnings = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
        assert len(warnings) == 1 and f"training at {native} px" in warnings[0] and "--resolution" in warnings[0]
        assert "512 px" in warnings[0]
        text = invoke([*base, "--backbone", backbone, "--dry-run"]).stdout
        assert f"{native} px (the backbone's native size)" in text and "estimated time:" in text
        assert "estimated peak memory per process:" in text
    # the user's --resolution wins, without a warning
    result = invoke([*base, "--backbone", "toy", "--resolution", "128", "--dry-run", "--json"])
    assert json.loads(result.stdout)["plan"]["resolution"] == 128 and "warning:" not in result.stderr
    # the real run trains at the native size too
    import anogen.fit

    seen = {}

    def fake_fit(category, config, out, **kwargs):
        seen["resolution"] = config.train.resolution
        return []

    monkeypatch.setattr(anogen.fit, "fit", fake_fit)
    assert invoke([*base, "--backbone", "tiny"]).exit_code == 0
    assert seen["resolution"] == 32
