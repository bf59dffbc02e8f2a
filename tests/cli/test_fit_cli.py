"""``anogen fit`` through CliRunner: flags reach the library as config, bad input exits 2 with one line,
and one real end-to-end run on the tiny backbone."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from anogen.cli.app import app
from tests.test_train import SIZE, write_toy_category


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return write_toy_category(tmp_path_factory.mktemp("fitdata"), defects=("hole", "stain"))


def invoke(args: list[str]):
    return CliRunner().invoke(app, [str(a) for a in args])


def test_flags_become_the_config_the_library_receives(data, tmp_path, monkeypatch):
    import anogen.fit

    seen = {}

    def fake_fit(category, config, out, **kwargs):
        seen.update(category=category, config=config, out=out, **kwargs)
        return [anogen.fit.FitResult(category.name, "stain", Path(out) / "widget" / "stain", 7, 0.5, "trained")]

    monkeypatch.setattr(anogen.fit, "fit", fake_fit)
    result = invoke([
        "fit", data, "--defect", "stain", "--backbone", "tiny", "--coupling", "none", "--bcm", "off",
        "--steps", "7", "--lr", "0.002", "--rank", "8", "--batch-size", "3", "--shots", "2", "--resolution", "64",
        "--mixed-precision", "bf16", "--gradient-checkpointing", "--gradient-accumulation", "2",
        "--checkpoint-every", "5", "--validate-every", "6", "--seed", "11", "--out", tmp_path / "runs",
        "--parallel", "defects", "--prior", tmp_path, "--resume", "--json",
    ])
    assert result.exit_code == 0, result.output
    config = seen["config"]
    assert config.preset == "generic/object"  # preset_for: the user's own object category
    assert config.backbone.id == "tiny"
    assert (config.adapter.coupling, config.adapter.bcm, config.adapter.rank) == ("none", False, 8)
    train = config.train
    assert (train.steps, train.learning_rate, train.batch_size, train.shots, train.resolution) == (7, 0.002, 3, 2, 64)
    assert (train.mixed_precision, train.gradient_checkpointing, train.gradient_accumulation) == ("bf16", True, 2)
    assert (train.checkpoint_every, train.validate_every, train.seed) == (5, 6, 11)
    assert seen["defects"] == ["stain"] and seen["resume"] is True and seen["parallel"] == "defects"
    assert seen["prior_dir"] == tmp_path and Path(seen["out"]) == tmp_path / "runs"
    assert seen["category"].name == "widget" and callable(seen["progress"])
    payload = json.loads(result.stdout)
    assert payload["results"][0]["steps_done"] == 7 and payload["preset"] == "generic/object"


def test_unset_flags_fall_through_to_the_preset(data, tmp_path, monkeypatch):
    import anogen.fit

    seen = {}
    monkeypatch.setattr(anogen.fit, "fit", lambda category, config, out, **kw: seen.update(config=config) or [])
    result = invoke(["fit", data, "--preset", "generic/texture", "--out", tmp_path])
    assert result.exit_code == 0, result.output
    from anogen.config import resolve

    assert seen["config"].train == resolve("generic/texture").train
    assert seen["config"].adapter == resolve("generic/texture").adapter


def test_dry_run_prints_the_plan_and_loads_no_model(data, tmp_path, monkeypatch):
    import anogen.fit
    import anogen.model.backbone

    def refuse(*args, **kwargs):
        raise AssertionError("a dry run must not load a model")

    monkeypatch.setattr(anogen.model.backbone, "load_backbone", refuse)
    monkeypatch.setattr(anogen.fit, "fit", refuse)
    args = ["fit", data, "--backbone", "tiny", "--bcm", "off", "--resolution", SIZE, "--rank", "4", "--steps", "9",
            "--out", tmp_path / "runs", "--dry-run"]
    result = invoke([*args, "--json"])
    assert result.exit_code == 0, result.output
    plan = json.loads(result.stdout)["plan"]
    assert [d["defect"] for d in plan["defects"]] == ["hole", "stain"]
    assert plan["defects"][0]["train"] == ["000", "001"] and plan["steps"] == 9
    assert plan["trainable_parameters"] > 0 and plan["estimated_peak_bytes"] > 0
    assert not (tmp_path / "runs").exists()
    text = invoke(args)
    assert "trainable parameters per adapter" in text.stdout and "estimated peak memory" in text.stdout


def _one_line_error(result) -> str:
    assert result.exit_code == 2, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines and lines[0].startswith("error:"), result.stderr
    assert not any("Traceback" in line for line in lines)
    assert len([line for line in lines if line.startswith("error:")]) == 1
    return " ".join(lines)


BASE = ["--backbone", "tiny", "--bcm", "off", "--resolution", str(SIZE), "--rank", "4", "--steps", "2",
        "--validate-every", "0", "--quiet"]


def test_bad_input_exits_2_with_one_line(data, tmp_path):
    out = ["--out", tmp_path / "runs"]
    cases = {
        "no training images": (["fit", data, *BASE, *out, "--shots", "50"], "more than the 6 images"),
        "unknown defect": (["fit", data, *BASE, *out, "--defect", "crack"], "no defect type 'crack'"),
        "bad --bcm": (["fit", data, *BASE[:2], "--bcm", "maybe", *BASE[4:], *out], "--bcm takes on or off"),
        "bad --coupling": (["fit", data, *BASE, *out, "--coupling", "weird"], "adapter.coupling"),
        "fp16 on cpu": (["fit", data, *BASE, *out, "--mixed-precision", "fp16"], "fp16 needs a CUDA GPU"),
        "missing data": (["fit", tmp_path / "nothing", *BASE, *out], "nothing"),
    }
    empty = write_toy_category(tmp_path / "empty")
    (empty / "test" / "crack").mkdir()
    cases["empty defect folder"] = (["fit", empty, *BASE, *out], "empty defect folder")
    nomask = write_toy_category(tmp_path / "nomask")
    (nomask / "ground_truth" / "stain" / "000_mask.png").unlink()
    cases["image without mask"] = (["fit", nomask, *BASE, *out], "without a mask")
    for name, (args, expected) in cases.items():
        text = _one_line_error(invoke(args))
        assert expected in text, (name, text)


def test_bad_backbones_exit_2_before_training(data, tmp_path, monkeypatch):
    broken = tmp_path / "broken"
    for component in ("unet", "vae", "text_encoder", "tokenizer"):  # no scheduler/
        (broken / component).mkdir(parents=True)
    text = _one_line_error(invoke(["fit", data, *BASE, "--backbone", broken, "--out", tmp_path / "r1"]))
    assert "missing scheduler" in text
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    text = _one_line_error(invoke(["fit", data, *BASE, "--backbone", "nobody/no-model", "--out", tmp_path / "r2"]))
    assert "not in the local cache" in text and "HF_HUB_OFFLINE" in text
    assert not (tmp_path / "r2").exists()


def test_end_to_end_run_resume_refusals_and_determinism(data, tmp_path):
    from anogen.io import canonical_safetensors

    args = ["fit", data, *BASE, "--defect", "stain", "--checkpoint-every", "1"]
    first = invoke([*args, "--out", tmp_path / "a", "--json"])
    assert first.exit_code == 0, first.output
    [row] = json.loads(first.stdout)["results"]
    folder = tmp_path / "a" / "widget" / "stain"
    assert row["status"] == "trained" and Path(row["folder"]) == folder
    for name in ("adapter.safetensors", "adapter.json", "train_log.jsonl", "validation/step-000002.png"):
        assert (folder / name).is_file(), name
    assert sorted(p.name for p in (folder / "checkpoints").iterdir()) == ["step-000001", "step-000002"]
    record = json.loads((folder / "adapter.json").read_text())
    assert record["config"]["backbone"]["id"] == "tiny" and record["steps_done"] == 2

    # the same command again, elsewhere: the same adapter (metadata order aside, see tests/test_train.py)
    second = invoke([*args, "--out", tmp_path / "b"])
    assert second.exit_code == 0, second.output
    same = [canonical_safetensors((tmp_path / d / "widget" / "stain" / "adapter.safetensors").read_bytes())
            for d in ("a", "b")]
    assert same[0] == same[1]

    # rerunning into a finished fit without --resume is refused; with another config --resume is refused
    text = _one_line_error(invoke([*args, "--out", tmp_path / "a"]))
    assert "already holds a fit" in text
    text = _one_line_error(invoke([*args, "--lr", "0.5", "--out", tmp_path / "a", "--resume"]))
    assert "cannot resume" in text and "learning_rate" in text
    # more steps with --resume continue from the last checkpoint
    more = invoke([*[a if a != "2" else "3" for a in args], "--out", tmp_path / "a", "--resume", "--json"])
    assert more.exit_code == 0, more.output
    assert json.loads(more.stdout)["results"][0]["status"] == "resumed"
    assert json.loads((folder / "adapter.json").read_text())["steps_done"] == 3


def _tree(folder: Path) -> dict[str, tuple[int, bytes]]:
    return {p.relative_to(folder).as_posix(): (p.stat().st_mtime_ns, p.read_bytes())
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_own_category_without_preset_or_prior_builds_its_prior_once(tmp_path):
    """A folder-layout product has no shipped preset: generic/object turns BCM on, and no --prior is given."""
    from tests.data.trees import write_folder

    data = write_folder(tmp_path / "mine", defects={"dent": 3, "stain": 3}, normals=4)
    check = invoke(["data", "check", data, "--json"])
    assert check.exit_code == 0, check.output
    report = json.loads(check.stdout)
    assert report["preset"] == "generic/object"
    assert "no shipped preset for folder category 'widget'" in report["preset_reason"]

    runs = tmp_path / "runs"
    args = ["fit", data, "--backbone", "tiny", "--resolution", SIZE, "--rank", "4", "--steps", "2",
            "--validate-every", "0", "--checkpoint-every", "0", "--out", runs]
    # a misspelt defect type stops the real run before the prior is built (minutes on a large category)
    typo = invoke([*args, "--defect", "dnet"])
    assert typo.exit_code == 2 and "dnet" in typo.stderr, typo.output
    assert not runs.exists()
    dry = invoke([*args, "--defect", "dent", "--dry-run", "--json"])
    assert dry.exit_code == 0, dry.output
    plan = json.loads(dry.stdout)["plan"]
    assert plan["bcm"] is True and plan["prior"] == str(runs / "_prior")
    assert "fit will build the prior in" in dry.stderr and not runs.exists()  # a dry run writes nothing

    first = invoke([*args, "--defect", "dent"])
    assert first.exit_code == 0, first.output
    assert f"built the prior in {runs / '_prior' / 'widget'}" in " ".join(first.stderr.split())
    prior = runs / "_prior" / "widget"
    record = json.loads((prior / "prior.json").read_text())
    assert record["kind"] == "object" and {r["stem"] for r in record["images"] if r["role"] == "train"}
    adapter = json.loads((runs / "widget" / "dent" / "adapter.json").read_text())
    assert adapter["prior"] == str(runs / "_prior") and adapter["config"]["adapter"]["bcm"] is True
    before = _tree(prior)
    # planned before the prior existed, the dry run described the BCM fit all the same: the same parameter count
    # and memory as once the prior is there (not the no-BCM fit's, nor "unknown")
    built = invoke([*args, "--defect", "stain", "--dry-run", "--json"])
    assert built.exit_code == 0, built.output
    built_plan = json.loads(built.stdout)["plan"]
    assert plan["trainable_parameters"] is not None and plan["trainable_parameters"] > 0
    for key in ("trainable_parameters", "estimated_peak_bytes", "estimated_peak_parts"):
        assert plan[key] == built_plan[key], key

    second = invoke([*args, "--defect", "stain"])
    assert second.exit_code == 0, second.output
    assert "reusing the prior in" in " ".join(second.stderr.split())
    assert _tree(prior) == before  # not rebuilt: every file untouched, same bytes and mtimes
    assert json.loads((runs / "widget" / "stain" / "adapter.json").read_text())["prior"] == str(runs / "_prior")


def test_resume_without_steps_keeps_the_adapter_and_synth_names_a_stale_output(data, tmp_path):
    """Issue 18.2 through the CLI: --resume without --steps leaves a finished fit alone (even when the config says
    more steps); --steps continues it with a one-line notice; synth then calls its earlier output stale."""
    base = [a for a in BASE if a != "--quiet"]
    args = ["fit", data, *base, "--defect", "stain", "--checkpoint-every", "1", "--out", tmp_path / "runs"]
    assert invoke(args).exit_code == 0
    folder = tmp_path / "runs" / "widget" / "stain"
    before = (folder / "adapter.safetensors").read_bytes()
    config = tmp_path / "more.yaml"
    config.write_text("train: {steps: 3}\n")  # a config that asks for more steps than the recorded run
    no_steps = [a for i, a in enumerate(args) if a != "--steps" and (i == 0 or args[i - 1] != "--steps")]
    result = invoke([*no_steps, "--resume", "--config", config, "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["results"][0]["status"] == "complete"
    assert (folder / "adapter.safetensors").read_bytes() == before
    synth = ["synth", tmp_path / "runs", "--out", tmp_path / "synth", "--count", "1", "--max-attempts", "1",
             "--steps", "2", "--quiet"]
    assert invoke(synth).exit_code in (0, 1)  # 1: the tiny model's one attempt may be rejected; the folder exists
    result = invoke([*no_steps, "--resume", "--steps", "3"])
    assert result.exit_code == 0, result.output
    notices = [line for line in result.stderr.splitlines() if "recorded target" in line]
    assert len(notices) == 1 and "stain 2 -> 3" in notices[0], result.stderr
    assert json.loads((folder / "adapter.json").read_text())["steps_done"] == 3
    text = _one_line_error(invoke(synth))
    assert "stale" in text and "earlier version" in text and "(2 steps; it now has 3)" in text, text
    assert "new --out" in text and "regenerate" in text, text
