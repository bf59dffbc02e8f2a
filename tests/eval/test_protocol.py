"""The downstream protocol: what it trains on, what it scores, and what it refuses to score."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from anogen.cli.app import app
from anogen.data import read_category
from anogen.errors import CompatibilityError, InputError
from anogen.eval.protocol import EvalConfig, plan_eval, read_synth, run_eval, train_segnet
from tests.eval.conftest import defect_stems, write_synth


def test_plan_tests_on_held_out_and_good_only(toy_tree: Path, synth_tree: Path) -> None:
    plan = plan_eval(read_category(toy_tree), read_synth(synth_tree))
    assert sorted((s.group, s.stem) for s in plan.shots) == [("hole", "000"), ("stain", "000")]
    test = sorted((i.group, i.stem, i.label) for i in plan.test)
    held = [(d, s, 1) for d in ("hole", "stain") for s in ("001", "002", "003")]
    assert test == sorted([("good", s, 0) for s in ("000", "001", "002")] + held)
    # Nothing the detector or the adapters trained on is in the test set.
    train_paths = {p.resolve() for p in plan.train_normals} | {s.path.resolve() for s in plan.shots}
    assert not train_paths & {i.path.resolve() for i in plan.test}
    assert plan.summary()["synth_samples"] == {"hole": 6, "stain": 6}  # accepted rows only


def test_refuses_split_that_trains_and_holds_out_the_same_image(tmp_path: Path, toy_tree: Path) -> None:
    stems = defect_stems(toy_tree, "stain")
    write_synth(tmp_path / "s", "widget", "stain", stems[:2], stems[1:])
    with pytest.raises(InputError, match="refusing to score an image that was used for training"):
        plan_eval(read_category(toy_tree), read_synth(tmp_path / "s"))


def test_refuses_a_test_image_identical_to_a_training_image(tmp_path: Path, toy_tree: Path) -> None:
    tree = shutil.copytree(toy_tree, tmp_path / "data" / "widget")
    # A normal training image copied into test/good under another name: same bytes, different path.
    shutil.copy(tree / "train" / "good" / "002.png", tree / "test" / "good" / "003.png")
    stems = defect_stems(tree, "stain")
    write_synth(tmp_path / "s", "widget", "stain", stems[:1], stems[1:])
    with pytest.raises(InputError, match=r"refusing to score .*003\.png: it was used for training \(a normal"):
        plan_eval(read_category(tree), read_synth(tmp_path / "s"))


def test_refuses_a_held_out_image_that_is_also_a_synthetic_training_sample(tmp_path: Path, toy_tree: Path) -> None:
    stems = defect_stems(toy_tree, "stain")
    synth = write_synth(tmp_path / "s", "widget", "stain", stems[:1], stems[1:])
    # A "generated" sample that is byte-for-byte a held-out real image: scoring that image would be a leak.
    shutil.copy(toy_tree / "test" / "stain" / "002.png", synth / "image" / "000003.png")
    with pytest.raises(InputError, match=r"refusing to score .*002\.png.*synthetic training sample"):
        plan_eval(read_category(toy_tree), read_synth(tmp_path / "s"))


def test_refuses_split_from_other_data_and_missing_split(tmp_path: Path, toy_tree: Path) -> None:
    write_synth(tmp_path / "a", "widget", "stain", ["017"], ["018"])
    with pytest.raises(CompatibilityError, match="'017'"):
        plan_eval(read_category(toy_tree), read_synth(tmp_path / "a"))
    write_synth(tmp_path / "b", "widget", "stain", [], [], with_split=False)
    with pytest.raises(InputError, match="no few-shot split recorded"):
        read_synth(tmp_path / "b")
    write_synth(tmp_path / "c", "gadget", "stain", ["000"], [])
    with pytest.raises(CompatibilityError, match="category 'gadget'"):
        plan_eval(read_category(toy_tree), read_synth(tmp_path / "c"))


def test_cli_refuses_training_images_with_exit_2_and_one_line(tmp_path: Path, toy_tree: Path) -> None:
    stems = defect_stems(toy_tree, "hole")
    write_synth(tmp_path / "s", "widget", "hole", stems[:2], stems[:1] + stems[2:])
    result = CliRunner().invoke(app, ["eval", "--data", str(toy_tree), "--synth", str(tmp_path / "s"), "--dry-run"])
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert lines[0].startswith("error:") and "refusing to score" in lines[0]


def test_selection_keeps_the_best_validation_step(toy_tree: Path, synth_tree: Path) -> None:
    from anogen.eval.protocol import _load_image, _load_mask, _pool_sampler, _validation

    plan = plan_eval(read_category(toy_tree), read_synth(synth_tree))
    normals = np.stack([_load_image(p, 32) for p in plan.train_normals])
    pairs = [pair for sd in plan.synth for pair in sd.samples]
    images = np.stack([_load_image(p, 32) for p, _ in pairs])
    masks = np.stack([_load_mask(m, 32) for _, m in pairs])
    config = EvalConfig(resolution=32, steps=6, batch_size=4, val_every=2, device="cpu")
    model, selection = train_segnet(
        normals[:6], _pool_sampler(images[:8], masks[:8]), config, method="anogen",
        validation=_validation(normals[6:], images[8:], masks[8:]),
    )
    scores = [h["val_score"] for h in selection["history"]]
    assert [h["step"] for h in selection["history"]] == [2, 4, 6]
    assert selection["val_score"] == max(scores)
    assert selection["step"] == selection["history"][int(np.argmax(scores))]["step"]


def test_run_eval_is_deterministic_and_reports_every_method(toy_tree: Path, synth_tree: Path) -> None:
    plan = plan_eval(read_category(toy_tree), read_synth(synth_tree))
    config = EvalConfig(resolution=32, steps=2, batch_size=4, baselines=("perlin", "none"), device="cpu", seed=5)
    first = run_eval(plan, config)
    second = run_eval(plan, config)
    assert list(first["methods"]) == ["anogen", "perlin", "none"]
    for method in first["methods"]:
        assert first["methods"][method]["metrics"] == second["methods"][method]["metrics"]
        assert all(0.0 <= v <= 1.0 for v in first["methods"][method]["metrics"].values())
    assert first["test"] == {"good": 3, "anomalous": 6}
    assert first["methods"]["none"]["train"]["anomalies"] == 2  # the two real shots
    assert first["methods"]["none"]["selection"]["val_score"] is None


def test_cli_end_to_end_with_baselines_and_quality(tmp_path: Path, toy_tree: Path, synth_tree: Path) -> None:
    out_file = tmp_path / "eval.json"
    args = [
        "eval", "--data", str(toy_tree), "--synth", str(synth_tree), "--baseline", "cutpaste", "--baseline", "none",
        "--quality", "--steps", "3", "--resolution", "32", "--batch-size", "4", "--device", "cpu", "--json",
        "--out", str(out_file),
    ]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert payload == json.loads(out_file.read_text())
    assert set(payload["methods"]) == {"anogen", "cutpaste", "none"}
    quality = payload["quality"]
    for defect in ("stain", "hole"):
        q = quality[defect]
        # The toy samples' masks are exact, so the colour rule finds exactly the masked pixels; a shuffled pair
        # (another sample's defect at another place) overlaps far less.
        assert q["alignment"]["iou"] == pytest.approx(1.0)
        assert q["alignment"]["chance_iou"] < 0.5
        assert q["rejections"] == {"attempts": 8, "rejected_share": 0.25, "reasons": {"empty_mask": 2}}
        assert q["memorisation"]["near_copies"] == 0 and q["diversity"] > 0


def test_cli_table_output(toy_tree: Path, synth_tree: Path) -> None:
    args = ["eval", "--data", str(toy_tree), "--synth", str(synth_tree), "--steps", "1", "--resolution", "32",
            "--batch-size", "2", "--device", "cpu"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "AU-PRO" in result.stdout and "anogen" in result.stdout


def test_bad_options_are_usage_errors(toy_tree: Path, synth_tree: Path) -> None:
    base = ["eval", "--data", str(toy_tree), "--synth", str(synth_tree)]
    assert CliRunner().invoke(app, [*base, "--baseline", "draem"]).exit_code == 2
    assert CliRunner().invoke(app, [*base, "--resolution", "30"]).exit_code == 2


def test_synth_root_with_several_categories_needs_a_category(tmp_path: Path, toy_tree: Path) -> None:
    write_synth(tmp_path / "s", "widget", "stain", ["000"], ["001", "002", "003"], count=2, rejected=0)
    write_synth(tmp_path / "s", "gadget", "stain", ["000"], [], count=2, rejected=0)
    with pytest.raises(InputError, match="several categories"):
        read_synth(tmp_path / "s")
    assert [d.category for d in read_synth(tmp_path / "s", category="widget")] == ["widget"]
    # The CLI passes DATA's category, so a mixed root works there, and --dry-run trains nothing.
    result = CliRunner().invoke(
        app, ["eval", "--data", str(toy_tree), "--synth", str(tmp_path / "s"), "--dry-run", "--json"]
    )
    assert result.exit_code == 0, result.output
    plan = json.loads(result.stdout)["plan"]
    assert plan["synth_samples"] == {"stain": 2} and plan["skipped_defects"] == ["hole"]
    assert plan["test_images"] == {"good": 3, "stain": 3}


def test_without_truth_masks_pixel_figures_are_undefined_not_zero(toy_tree: Path, synth_tree: Path) -> None:
    import dataclasses

    category = read_category(toy_tree)
    for defect in category.defects.values():
        defect.samples = [dataclasses.replace(s, mask=None) for s in defect.samples]
    plan = plan_eval(category, read_synth(synth_tree))
    result = run_eval(plan, EvalConfig(resolution=32, steps=1, batch_size=2, device="cpu"))
    metrics = result["methods"]["anogen"]["metrics"]
    assert metrics["pixel_ap"] is None and metrics["aupro"] is None
    assert 0.0 <= metrics["image_auroc"] <= 1.0


def test_unavailable_device_is_an_input_error(toy_tree: Path, synth_tree: Path) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    args = ["eval", "--data", str(toy_tree), "--synth", str(synth_tree), "--device", "cuda", "--steps", "1"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2 and "no CUDA device" in result.output


def test_split_falls_back_to_the_adapter_record(tmp_path: Path, toy_tree: Path) -> None:
    write_synth(tmp_path / "s", "widget", "stain", [], [], with_split=False)
    adapter = tmp_path / "s" / "runs" / "widget" / "stain"  # where write_synth's run.json points
    adapter.mkdir(parents=True)
    (adapter / "adapter.json").write_text(json.dumps({"split": {"train": ["001"], "held_out": ["000", "002"]}}))
    (synth,) = read_synth(tmp_path / "s" / "widget" / "stain")
    assert synth.split_train == ("001",)
    plan = plan_eval(read_category(toy_tree), [synth])
    assert [s.stem for s in plan.shots] == ["001"]


def test_dry_run_checks_the_device_like_the_real_run(toy_tree: Path, synth_tree: Path) -> None:
    """Issue 18.3: ``eval --dry-run`` stops on a device the real run cannot use, with the real run's error."""
    import torch

    if torch.cuda.is_available():
        pytest.skip("needs a machine without CUDA")
    base = ["eval", "--data", str(toy_tree), "--synth", str(synth_tree), "--device", "cuda", "--steps", "1"]
    dry, real = CliRunner().invoke(app, [*base, "--dry-run"]), CliRunner().invoke(app, base)
    assert dry.exit_code == real.exit_code == 2, (dry.output, real.output)
    errors = [[line for line in r.stderr.splitlines() if line.startswith("error:")] for r in (dry, real)]
    assert errors[0] == errors[1] and "no CUDA device" in errors[0][0]
