"""Every SD-1.x preset defaults to the reference implementation's recipe; ``--recipe fast`` changes exactly the
fields docs/presets.md lists; the toy presets keep their values and follow no recipe."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from anogen.config import list_presets, resolve
from anogen.errors import PresetError

DOCS = Path(__file__).resolve().parents[1] / "docs" / "presets.md"
SD_PRESETS = [name for name in list_presets() if not name.startswith("toy/")]

# Read off the reference code (zhiqing0205/DualAnoDiff): dual-interrelated_diff/train.sh and run_mvtec_split.py
# (plain), bcm-dual-interrelated_diff/run_mvtec_split_background_control_scale.py (BCM training) and
# inference_test_tempt.py (BCM sampling), inference_mvtec_split.py (plain sampling), the processors of their
# vendored diffusers/models/attention_processor.py (SAIM and BCM shapes).
REFERENCE_ADAPTER = {
    "rank": 32, "saim_width": None, "saim_init": "default", "text_encoder_lora": True, "text_encoder_rank": 32,
    "coupling": "saim", "prompt_whole": "a vfx with sks", "prompt_part": "sks",
}  # fmt: skip
REFERENCE_TRAIN = {"steps": 5000, "learning_rate": 2e-5, "max_grad_norm": 1.0, "gradient_accumulation": 1,
                   "resolution": 512}  # fmt: skip
REFERENCE_BCM_SAMPLE = {"sampler": "pndm", "steps": 50, "guidance": 2.0, "bcm_uncond_reference": "grey",
                        "bcm_reference_every": 50, "bcm_reference_pool": "first_third"}  # fmt: skip
REFERENCE_PLAIN_SAMPLE = {"sampler": "pndm", "steps": 100, "guidance": 2.5}
# anogen's SD-1.x choices before this recipe became the default: what --recipe fast must give back.
FAST = {
    "adapter": {"saim_width": 320, "saim_init": "zero", "text_encoder_lora": False, "bcm_width": None},
    "train": {"steps": 2000, "learning_rate": 1e-4, "batch_size": 2, "max_grad_norm": None},
    "sample": {"sampler": "dpmsolver++", "steps": 30, "guidance": 2.5, "bcm_uncond_reference": "background",
               "bcm_reference_every": 1, "bcm_reference_pool": "all"},
}  # fmt: skip


def _fields(config, section: str) -> dict:
    return dataclasses.asdict(getattr(config, section))


def test_there_are_sd_presets_to_check() -> None:
    assert {"mvtec/bottle", "mvtec/carpet", "visa/pcb1", "generic/object", "generic/texture"} <= set(SD_PRESETS)


@pytest.mark.parametrize("name", SD_PRESETS)
def test_every_sd_preset_is_the_reference_recipe(name: str) -> None:
    config = resolve(name)
    assert config.recipe == "reference"
    assert config.backbone.id == "stable-diffusion-v1-5/stable-diffusion-v1-5"
    adapter, train, sample = (_fields(config, s) for s in ("adapter", "train", "sample"))
    assert {k: adapter[k] for k in REFERENCE_ADAPTER} == REFERENCE_ADAPTER
    assert {k: train[k] for k in REFERENCE_TRAIN} == REFERENCE_TRAIN
    if config.adapter.bcm:
        assert config.adapter.bcm_width == 320  # Linear(C, 320) -> Linear(320, C)
        assert config.train.batch_size == 2  # the BCM launcher's --train_batch_size
        expected = dict(REFERENCE_BCM_SAMPLE)
        if name == "mvtec/screw":
            expected.update(guidance=1.2, bcm_reference_every=10)
        assert {k: sample[k] for k in expected} == expected
    else:
        assert config.train.batch_size == 4
        assert {k: sample[k] for k in REFERENCE_PLAIN_SAMPLE} == REFERENCE_PLAIN_SAMPLE
    assert config.train.save_dtype == "fp16"


def _documented_fast_fields() -> set[tuple[str, str]]:
    text = DOCS.read_text(encoding="utf-8")
    section = text[text.index("## Recipes"):]
    section = section[: section.index("\n## ", 1)] if "\n## " in section[1:] else section
    return {tuple(m.split(".")) for m in re.findall(r"^\| `(\w+\.\w+)` \|", section, re.MULTILINE)}


@pytest.mark.parametrize("name", SD_PRESETS)
def test_fast_recipe_differs_only_where_documented(name: str) -> None:
    reference, fast = resolve(name), resolve(name, recipe="fast")
    assert fast.recipe == "fast" and resolve(name, recipe="reference") == reference
    changed = set()
    for section in ("backbone", "adapter", "train", "sample", "mask"):
        old, new = _fields(reference, section), _fields(fast, section)
        changed |= {(section, key) for key in old if old[key] != new[key]}
    documented = _documented_fast_fields()
    assert changed <= documented, f"undocumented differences: {sorted(changed - documented)}"
    for section, values in FAST.items():
        got = _fields(fast, section)
        assert {k: got[k] for k in values} == values
    # Per-category choices stay with the category under either recipe.
    assert fast.train.flips == reference.train.flips and fast.mask == reference.mask
    assert fast.adapter.bcm == reference.adapter.bcm


def test_documented_fields_match_the_recipe_file() -> None:
    documented = _documented_fast_fields()
    assert documented == {(s, k) for s, values in FAST.items() for k in values}


def test_recipe_precedence_between_preset_and_config_file(tmp_path: Path) -> None:
    run = tmp_path / "run.yaml"
    run.write_text("sample: {steps: 7}\n")
    config = resolve("mvtec/bottle", run, {"train": {"steps": 9}}, recipe="fast")
    assert (config.sample.steps, config.train.steps, config.sample.sampler) == (7, 9, "dpmsolver++")


@pytest.mark.parametrize("name", ["toy/object", "toy/texture"])
def test_toy_presets_follow_no_recipe_and_keep_their_values(name: str) -> None:
    config = resolve(name)
    assert config.recipe is None
    # the new knobs sit at values that reproduce the behaviour before they existed
    assert (config.adapter.saim_init, config.adapter.bcm_width, config.adapter.text_encoder_lora) == ("zero", None,
                                                                                                   False)
    assert (config.train.max_grad_norm, config.train.save_dtype) == (None, "fp32")
    assert (config.sample.bcm_uncond_reference, config.sample.bcm_reference_every,
            config.sample.bcm_reference_pool) == ("background", 1, "all")
    assert (config.sample.sampler, config.sample.steps, config.train.learning_rate) == ("sde-dpmsolver++", 20, 1e-3)
    with pytest.raises(PresetError, match="follows no recipe"):
        resolve(name, recipe="fast")


def test_unknown_recipe_is_refused() -> None:
    with pytest.raises(PresetError, match="unknown recipe 'slow'"):
        resolve("mvtec/bottle", recipe="slow")
    with pytest.raises(PresetError, match="needs a preset"):
        resolve(None, recipe="fast")


def test_synth_recipe_takes_the_fit_preset_under_that_recipe() -> None:
    from anogen.config import ConfigRequest
    from anogen.records import AdapterRecord
    from anogen.synth.jobs import job_configs

    recorded = dataclasses.asdict(resolve("mvtec/screw").sample)
    record = AdapterRecord.from_dict({"preset": "mvtec/screw", "config": {"sample": recorded, "mask": {}}})
    assert job_configs(record, ConfigRequest()).sample.sampler == "pndm"
    fast = job_configs(record, ConfigRequest(overrides={"sample": {"count": 5}}, recipe="fast")).sample
    assert (fast.sampler, fast.steps, fast.guidance, fast.count) == ("dpmsolver++", 30, 2.5, 5)
    faster = AdapterRecord.from_dict({"preset": "mvtec/screw", "config": {"sample": dataclasses.asdict(fast)}})
    back = job_configs(faster, ConfigRequest(recipe="reference")).sample
    assert (back.sampler, back.steps, back.guidance, back.bcm_reference_every) == ("pndm", 50, 1.2, 10)


def test_fit_cli_recipe_reaches_the_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    import anogen.fit
    from anogen.cli.app import app
    from tests.test_train import write_toy_category

    data = write_toy_category(tmp_path / "data")
    seen = {}

    def fake_fit(category, config, out, **kwargs):
        seen["config"] = config
        return []

    monkeypatch.setattr(anogen.fit, "fit", fake_fit)
    result = CliRunner().invoke(app, ["fit", str(data), "--recipe", "fast", "--bcm", "off", "--out",
                                      str(tmp_path / "runs")])
    assert result.exit_code == 0, result.output
    assert seen["config"].recipe == "fast" and seen["config"].train.steps == 2000
    assert "recipe fast" in result.output
    bad = CliRunner().invoke(app, ["fit", str(data), "--preset", "toy/object", "--recipe", "fast"])
    assert bad.exit_code == 2 and "follows no recipe" in bad.output
    # storage precision and clipping are one flag away; --max-grad-norm 0 switches the preset's clipping off
    for flag, expected in (("0", None), ("0.5", 0.5)):
        result = CliRunner().invoke(app, ["fit", str(data), "--bcm", "off", "--save-dtype", "fp32",
                                          "--max-grad-norm", flag, "--out", str(tmp_path / "runs")])
        assert result.exit_code == 0, result.output
        assert seen["config"].train.save_dtype == "fp32" and seen["config"].train.max_grad_norm == expected
    assert resolve("generic/object").train.max_grad_norm == 1.0
    bad = CliRunner().invoke(app, ["fit", str(data), "--save-dtype", "int8"])
    assert bad.exit_code == 2 and "unknown save dtype 'int8'" in bad.output


def test_synth_preset_keeps_the_recorded_fields_it_does_not_set() -> None:
    # defaults < the adapter's recorded config < --preset: before, --preset replaced the recorded config whole,
    # so max_area_fraction (which toy/object does not set) fell back to the default 0.5.
    from anogen.config import ConfigRequest
    from anogen.records import AdapterRecord
    from anogen.synth.jobs import job_configs

    record = AdapterRecord.from_dict({"preset": "generic/object",
                                      "config": {"mask": {"threshold": 0.2, "max_area_fraction": 0.3},
                                                 "sample": {"negative_prompt": "blurry", "steps": 99}}})
    resolved = job_configs(record, ConfigRequest(preset="toy/object"))
    assert (resolved.mask.threshold, resolved.mask.max_area_fraction) == (0.4, 0.3)
    assert (resolved.sample.steps, resolved.sample.negative_prompt) == (20, "blurry")
