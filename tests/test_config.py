"""Config schema and precedence: defaults < preset (with its extends chain) < config file < overrides."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from anogen.config import (
    SampleConfig,
    TrainConfig,
    list_presets,
    load_preset_raw,
    preset_for,
    resolve,
)
from anogen.data.model import CategoryKind
from anogen.errors import PresetError


@pytest.fixture()
def preset_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A presets folder of our own: a hidden base, a child that extends it, and a toy preset."""
    root = tmp_path / "presets"
    (root / "shop").mkdir(parents=True)
    (root / "toy").mkdir()
    (root / "shop" / "_base.yaml").write_text(
        "description: base\nvalidated: true\n"
        "train: {steps: 100, learning_rate: 0.5, batch_size: 3, flips: [vertical]}\n"
        "sample: {guidance: 7.0}\n"
    )
    (root / "shop" / "widget.yaml").write_text(
        "extends: shop/_base\ndescription: a widget\ntrain: {steps: 200, learning_rate: 0.25}\nmask: {min_area: 5}\n"
    )
    (root / "toy" / "object.yaml").write_text("description: toy object\n")
    monkeypatch.setenv("ANOGEN_PRESETS_DIR", str(root))
    return root


def test_precedence_defaults_preset_file_overrides(preset_root: Path, tmp_path: Path) -> None:
    config_file = tmp_path / "run.yaml"
    config_file.write_text("train: {steps: 300, learning_rate: 0.125}\nsample: {steps: 12}\n")
    resolved = resolve(
        "shop/widget",
        config_file,
        overrides={"train": {"steps": 400, "batch_size": None}, "sample": {"count": None}},
    )
    train, defaults = resolved.train, TrainConfig()
    assert train.steps == 400  # overrides beat the config file, the preset and its base
    assert train.learning_rate == 0.125  # the config file beats the preset
    assert train.batch_size == 3  # None in overrides means "flag not given": the base preset's value stays
    assert train.flips == ("vertical",)  # lists become the dataclass's tuples
    assert train.seed == defaults.seed and train.resolution == defaults.resolution  # untouched: defaults
    assert resolved.sample.steps == 12 and resolved.sample.guidance == 7.0
    assert resolved.sample.count == SampleConfig().count
    assert resolved.mask.min_area == 5
    assert resolved.preset == "shop/widget" and resolved.config_file == str(config_file)
    assert resolved.validated is True  # inherited from the base's meta key
    # Without the upper layers the preset's own value shows through.
    assert resolve("shop/widget").train.steps == 200
    assert resolve().train.steps == defaults.steps


def test_to_dict_is_json(preset_root: Path) -> None:
    data = resolve("shop/widget").to_dict()
    assert json.loads(json.dumps(data))["train"]["flips"] == ["vertical"]


def test_hidden_bases_are_not_listed(preset_root: Path) -> None:
    assert list_presets() == ["shop/widget", "toy/object"]
    assert load_preset_raw("shop/_base")["train"]["steps"] == 100


@pytest.mark.parametrize(
    "text,named",
    [
        ("train: {stepz: 5}", "unknown key train.stepz (did you mean 'steps'?)"),
        ("trian: {steps: 5}", "unknown section 'trian'"),
        ("train: {steps: many}", "train.steps = 'many' does not fit type int"),
        ("adapter: {coupling: glue}", "adapter.coupling = 'glue'"),
        ("train: {flips: [diagonal]}", "['diagonal']: 'diagonal' is not one of horizontal, vertical, rotate90"),
        ("mask: {threshold: median}", "mask.threshold"),
        ("train: 5", "section 'train' must be a mapping"),
        ("extends: shop/widget", "'extends' is only allowed in presets"),
    ],
)
def test_a_bad_key_is_named(tmp_path: Path, preset_root: Path, text: str, named: str) -> None:
    config_file = tmp_path / "bad.yaml"
    config_file.write_text(text + "\n")
    with pytest.raises(PresetError) as info:
        resolve(config_file=config_file)
    assert named in str(info.value) and str(config_file) in str(info.value)


def test_bad_preset_file_and_names(preset_root: Path) -> None:
    (preset_root / "shop" / "broken.yaml").write_text("train: {learning_rat: 1}\n")
    with pytest.raises(PresetError, match=r"preset shop/broken: unknown key train.learning_rat"):
        resolve("shop/broken")
    (preset_root / "shop" / "loop.yaml").write_text("extends: shop/loop\n")
    with pytest.raises(PresetError, match="extends itself"):
        resolve("shop/loop")
    with pytest.raises(PresetError, match="unknown preset 'shop/widgit'") as info:
        resolve("shop/widgit")
    assert "shop/widget" in info.value.hint
    with pytest.raises(PresetError, match="invalid preset name"):
        resolve("../etc/passwd")
    with pytest.raises(PresetError, match="does not exist"):
        resolve(config_file=preset_root / "nope.yaml")


def test_overrides_are_checked_too() -> None:
    with pytest.raises(PresetError, match="command-line options: unknown key sample.stepz"):
        resolve(overrides={"sample": {"stepz": 3}})


def test_preset_for_shipped_toy_and_generic(preset_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert preset_for("toy", "object", CategoryKind.OBJECT) == "toy/object"
    assert preset_for("toy", "texture", CategoryKind.TEXTURE) == "generic/texture"  # no toy/texture here
    assert preset_for("folder", "widget", None) == "generic/object"
    assert preset_for("folder", "cloth", CategoryKind.TEXTURE) == "generic/texture"
    monkeypatch.delenv("ANOGEN_PRESETS_DIR")  # the shipped presets
    assert preset_for("mvtec", "bottle", CategoryKind.OBJECT) == "mvtec/bottle"
    assert preset_for("visa", "pcb1", CategoryKind.OBJECT) == "visa/pcb1"
    assert preset_for("mvtec", "bottlе", None) == "generic/object"  # a Cyrillic "е": not the shipped name
    assert preset_for("mvtec2", "fabric", CategoryKind.TEXTURE) == "generic/texture"
    assert preset_for("visa", "bottle", CategoryKind.OBJECT) == "generic/object"  # no cross-dataset match


def test_choose_preset_says_why() -> None:
    from anogen.config import choose_preset

    shipped = choose_preset("mvtec", "bottle", CategoryKind.OBJECT)
    assert shipped.name == "mvtec/bottle" and shipped.reason == "shipped preset for mvtec category 'bottle'"
    own = choose_preset("folder", "widget", None)
    assert own.name == "generic/object"
    assert own.reason.startswith("no shipped preset for folder category 'widget'") and "unknown" in own.reason
    cloth = choose_preset("folder", "cloth", CategoryKind.TEXTURE)
    assert cloth.name == "generic/texture" and "marks it as texture" in cloth.reason


def test_recorded_config_sits_under_the_preset(preset_root: Path, tmp_path: Path) -> None:
    # defaults < recorded < preset < config file < flags: fields the preset does not set keep the recorded values
    # (before, a preset replaced the recorded config whole, and these fell back to the defaults).
    recorded = {"sample": {"guidance": 1.0, "steps": 77}, "mask": {"min_area": 9, "blur_sigma": 2.0}}
    config = resolve("shop/widget", recorded=recorded)
    assert (config.sample.guidance, config.sample.steps) == (7.0, 77)
    assert (config.mask.min_area, config.mask.blur_sigma) == (5, 2.0)
    file = tmp_path / "run.yaml"
    file.write_text("sample: {steps: 12}\n")
    config = resolve("shop/widget", file, {"mask": {"blur_sigma": 0.5}}, recorded=recorded)
    assert (config.sample.steps, config.mask.blur_sigma) == (12, 0.5)
    # fields a later anogen recorded are dropped, not refused
    assert resolve(recorded={"sample": {"steps": 3, "from_the_future": 1}}).sample.steps == 3


def test_range_checks_live_in_the_config_classes(tmp_path: Path) -> None:
    from anogen.config import MaskConfig
    from anogen.errors import InputError

    with pytest.raises(InputError, match=r"mask\.threshold \(--threshold\) must lie in \[0, 1\]"):
        MaskConfig(threshold=1.5)
    with pytest.raises(InputError, match=r"sample\.steps \(--steps\) must be at least 1"):
        SampleConfig(steps=0)
    with pytest.raises(InputError, match=r"train\.save_dtype \(--save-dtype\) = 'int8'"):
        TrainConfig(save_dtype="int8")  # type: ignore[arg-type]
    with pytest.raises(InputError, match=r"train\.max_grad_norm \(--max-grad-norm\) must be >= 0"):
        TrainConfig(max_grad_norm=-1.0)
    assert TrainConfig(max_grad_norm=0).max_grad_norm is None  # 0: no clipping, recorded as null
    # A count of 0 from a config file names the field, not a flag the user did not give.
    file = tmp_path / "run.yaml"
    file.write_text("sample: {count: 0}\n")
    with pytest.raises(InputError, match=r"sample\.count \(--count\) = 0 asks for no samples") as caught:
        resolve(config_file=file)
    assert "--count 0" not in str(caught.value)
