"""Presets on disk: where they live, reading one with its ``extends`` chain, recipe overlays, and the preset a
category gets when the user names none (:func:`choose_preset`)."""

from __future__ import annotations

import difflib
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from anogen.config.checks import META_KEYS, validate_sections
from anogen.errors import PresetError

if TYPE_CHECKING:
    from anogen.config.sections import ResolvedConfig
    from anogen.data.model import CategoryKind

# Named recipes (docs/presets.md). A preset that says `recipe: reference` holds the reference implementation's
# recipe; another recipe is an overlay file `presets/_recipes/<name>.yaml` applied on top of it.
RECIPES = ("reference", "fast")


def presets_dir() -> Path:
    """The folder holding the shipped presets (``ANOGEN_PRESETS_DIR`` overrides, for tests)."""
    override = os.environ.get("ANOGEN_PRESETS_DIR")
    if override:
        return Path(override)
    package_root = Path(__file__).resolve().parent.parent  # anogen/
    packaged = package_root / "_presets"
    if packaged.is_dir():
        return packaged
    return package_root.parent / "presets"


def list_presets() -> list[str]:
    """Names of the shipped presets (``group/name``), sorted; abstract bases (``_name``) are left out."""
    root = presets_dir()
    names = []
    for path in root.rglob("*.yaml"):
        name = path.relative_to(root).with_suffix("").as_posix()
        if not any(part.startswith("_") for part in name.split("/")):
            names.append(name)
    return sorted(names)


def _preset_path(name: str) -> Path:
    root = presets_dir()
    if ".." in Path(name).parts or Path(name).is_absolute():
        raise PresetError(f"invalid preset name {name!r}")
    path = root / f"{name}.yaml"
    if not path.is_file():
        close = difflib.get_close_matches(name, list_presets(), n=3)
        hint = f"did you mean {', '.join(close)}?" if close else "see `anogen presets list`"
        raise PresetError(f"unknown preset {name!r}", hint=hint)
    return path


def read_yaml_mapping(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise PresetError(f"cannot read {path}: {exc.strerror or exc}") from exc
    except yaml.YAMLError as exc:
        raise PresetError(f"{path}: not valid YAML ({exc})") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise PresetError(f"{path}: expected a mapping of sections, got {type(data).__name__}")
    return data


def load_preset_raw(name: str, _seen: tuple[str, ...] = ()) -> dict[str, Any]:
    """A preset's sections with its ``extends`` chain merged in (the preset's own values win)."""
    if name in _seen:
        raise PresetError(f"preset {name!r} extends itself through {' -> '.join(_seen)}")
    path = _preset_path(name)
    data = read_yaml_mapping(path)
    validate_sections(data, source=f"preset {name}", allow_meta=True)
    base: dict[str, Any] = {}
    if "extends" in data:
        base = load_preset_raw(str(data["extends"]), (*_seen, name))
    merged = merge_sections(base, {k: v for k, v in data.items() if k != "extends"})
    return merged


def merge_sections(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    merged: dict[str, Any] = {k: (dict(v) if isinstance(v, Mapping) else v) for k, v in base.items()}
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), dict):
            merged[key] = {**merged[key], **value}
        else:
            merged[key] = dict(value) if isinstance(value, Mapping) else value
    return merged


def recipe_overlay(name: str) -> dict[str, Any]:
    """The sections recipe ``name`` sets over a preset that follows the reference recipe (empty for
    ``reference``)."""
    if name not in RECIPES:
        raise PresetError(f"unknown recipe {name!r}", hint=f"choose one of: {', '.join(RECIPES)}")
    if name == "reference":
        return {}
    raw = load_preset_raw(f"_recipes/{name}")
    return {k: v for k, v in raw.items() if k not in META_KEYS}


@dataclass(frozen=True)
class PresetChoice:
    """The preset a category gets when the user names none, and why (``anogen data check`` shows both).

    Args:
        name (`str`): the preset, e.g. ``mvtec/bottle`` or ``generic/object``.
        reason (`str`): one line, e.g. ``"no shipped preset for folder category 'widget'; object: generic/object"``.
    """

    name: str
    reason: str


def choose_preset(dataset_format: str, category: str, kind: CategoryKind | str | None = None) -> PresetChoice:
    """The preset a category gets when the user names none, with the reason.

    ``mvtec/<category>`` and ``visa/<object>`` when such a preset ships, ``toy/<category>`` for the toy world;
    anything else (a user's own product, MVTec AD 2) gets ``generic/texture`` for texture categories and
    ``generic/object`` otherwise (an unknown kind is treated as an object: BCM on, its prior built by ``fit``).

    Args:
        dataset_format (`str`): the layout the category was read from (``Category.dataset_format``).
        category (`str`): the category name.
        kind (`CategoryKind`, *optional*): object or texture, if known.
    """
    group = {"mvtec": "mvtec", "visa": "visa", "toy": "toy"}.get(dataset_format)
    if group is not None and f"{group}/{category}" in list_presets():
        return PresetChoice(f"{group}/{category}", f"shipped preset for {dataset_format} category {category!r}")
    kind_value = getattr(kind, "value", kind)
    name = "generic/texture" if kind_value == "texture" else "generic/object"
    why = f"no shipped preset for {dataset_format} category {category!r}; "
    if kind_value in ("object", "texture"):
        why += f"the data set marks it as {kind_value}"
    else:
        why += "its kind is unknown, taken as an object (pass --preset generic/texture for a texture)"
    return PresetChoice(name, why)


def preset_for(dataset_format: str, category: str, kind: CategoryKind | str | None = None) -> str:
    """The name of :func:`choose_preset`'s preset (commands print the name they picked)."""
    return choose_preset(dataset_format, category, kind).name


def preset_line(config: ResolvedConfig) -> str:
    """The one line a command prints about its preset, with the not-validated notice where it applies.

    The notice is for presets whose values were reasoned, not measured (``validated: false``); the toy world's
    presets are validated by their own measurements on the toy world (docs/synth.md) and get no notice.
    """
    name = config.preset or "none (defaults)"
    if config.recipe:
        name += f", recipe {config.recipe}"
    if config.preset and not config.validated:
        return f"preset {name} (values not yet validated on real data)"
    return f"preset {name}"
