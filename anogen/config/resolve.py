"""The one place precedence is applied: :func:`resolve`, and :class:`ConfigRequest`, what a command asks for.

Lowest first: dataclass defaults < the config recorded at fit (``recorded``; synth resolves once per adapter on
top of what the adapter recorded) < preset (after its ``extends`` chain) < recipe overlay (``--recipe``, right
above the preset it applies to) < config file (``--config``) < overrides (flags, Python keyword values).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from anogen.config.checks import COMMAND_LINE, _build_section, validate_sections
from anogen.config.presets import RECIPES, load_preset_raw, merge_sections, read_yaml_mapping, recipe_overlay
from anogen.config.sections import SECTIONS, ResolvedConfig
from anogen.errors import PresetError

RECORDED = "recorded config"  # the source name of the recorded layer in error messages


@dataclass(frozen=True)
class ConfigRequest:
    """What a command asks for, before any layer is read: the CLI passes its options as one, and the library
    resolves it (``fit`` once; ``synth`` once per adapter, over the config that adapter recorded at fit).

    Args:
        preset (`str`, *optional*): a shipped preset name such as ``mvtec/bottle``.
        config_file (`str | Path`, *optional*): a YAML file with the same sections as a preset.
        overrides (`Mapping`, *optional*): ``{section: {field: value}}`` (flags; ``None`` values are not given and
            fall through to the layers below), or ``{section: config object}`` (a Python caller's whole section:
            every field of it is set, ``None`` included).
        recipe (`str`, *optional*): ``reference`` or ``fast`` (docs/presets.md).
    """

    preset: str | None = None
    config_file: str | Path | None = None
    overrides: Mapping[str, Any] = field(default_factory=dict)
    recipe: str | None = None

    def resolve(self, recorded: Mapping[str, Any] | None = None) -> ResolvedConfig:
        """:func:`resolve` of this request, over ``recorded`` (a recorded config's sections) when given."""
        return resolve(self.preset, self.config_file, self.overrides, recipe=self.recipe, recorded=recorded)

    def check(self) -> None:
        """Resolve the request on its own (no recorded layer), for its errors only: a bad flag, preset or config
        file stops a command before it reads any adapter, even where none is found. A recipe without a preset
        waits for the adapters' fit presets."""
        resolve(self.preset, self.config_file, self.overrides, recipe=self.recipe if self.preset else None)

    def chooses(self, section: str) -> bool:
        """Whether the request itself sets values of ``section``: a preset or config file (either may hold any
        section) or a given override. Synth keeps an output folder's own mask and verify settings otherwise."""
        if self.preset is not None or self.config_file is not None:
            return True
        return bool(override_values(self.overrides.get(section)))

    def gives(self, section: str, name: str) -> bool:
        """Whether the user chose ``section.name`` outright: an override, or a value in the config file (a
        preset's value is not a choice of the user's)."""
        if name in override_values(self.overrides.get(section)):
            return True
        if self.config_file is None or not Path(self.config_file).is_file():
            return False
        return name in (read_yaml_mapping(Path(self.config_file)).get(section) or {})


def override_values(section: Any) -> dict[str, Any]:
    """The values an override section sets: every field of a config object, the non-``None`` ones of a mapping."""
    if section is None:
        return {}
    if dataclasses.is_dataclass(section) and not isinstance(section, type):
        return {f.name: getattr(section, f.name) for f in fields(section)}
    return {k: v for k, v in section.items() if v is not None}


def recorded_layer(recorded: Mapping[str, Any]) -> dict[str, Any]:
    """The sections of a recorded config that this version knows (an adapter from a later anogen may record
    fields it does not: they are dropped rather than refused)."""
    layer: dict[str, Any] = {}
    for name, cls in SECTIONS.items():
        values = recorded.get(name)
        if isinstance(values, Mapping):
            known = {f.name for f in fields(cls)}
            layer[name] = {k: v for k, v in values.items() if k in known}
    return layer


def resolve(
    preset: str | None = None,
    config_file: str | Path | None = None,
    overrides: Mapping[str, Any] | None = None,
    *,
    recipe: str | None = None,
    recorded: Mapping[str, Any] | None = None,
) -> ResolvedConfig:
    """Apply defaults < recorded < preset < recipe < config file < overrides and build every section's config.

    Args:
        preset (`str`, *optional*): a shipped preset name such as ``mvtec/bottle``.
        config_file (`str | Path`, *optional*): a YAML file with the same sections as a preset.
        overrides (`Mapping`, *optional*): ``{section: {field: value}}``; ``None`` values are ignored so that
            unset CLI flags fall through to the layers below. A config object as a section's value sets every
            field of it.
        recipe (`str`, *optional*): ``reference`` or ``fast`` (docs/presets.md); only for presets that follow a
            recipe (every SD-1.x preset); ``None`` keeps the preset's own (``reference``). Without ``preset``, the
            preset ``recorded`` names (the adapter's fit preset) is applied under it.
        recorded (`Mapping`, *optional*): a config recorded at fit (``{section: {field: value}}``, plus the
            ``preset`` it was fitted with), the lowest layer above the defaults.
    """
    merged: dict[str, Any] = recorded_layer(recorded) if recorded else {}
    if merged:
        validate_sections(merged, source=RECORDED, allow_meta=False)
    if recipe is not None and not preset and recorded and recorded.get("preset"):
        # A recipe sits right above the preset it applies to: without --preset, the one the adapter was fitted with.
        preset = str(recorded["preset"])
    validated = False
    own_recipe = None
    if preset:
        from_preset = load_preset_raw(preset)
        validated = bool(from_preset.get("validated", False))
        own_recipe = from_preset.get("recipe")
        merged = merge_sections(merged, from_preset)
    if recipe is not None:
        if recipe not in RECIPES:
            raise PresetError(f"unknown recipe {recipe!r}", hint=f"choose one of: {', '.join(RECIPES)}")
        if own_recipe is None:
            raise PresetError(
                f"preset {preset!r} follows no recipe, so --recipe {recipe} cannot apply to it"
                if preset
                else f"--recipe {recipe} needs a preset that follows a recipe",
                hint="recipes apply to the SD-1.x presets (mvtec/*, visa/*, generic/*)",
            )
        merged = merge_sections(merged, recipe_overlay(recipe))
    if config_file is not None:
        path = Path(config_file)
        if not path.is_file():
            raise PresetError(f"config file {path} does not exist")
        data = read_yaml_mapping(path)
        validate_sections(data, source=str(path), allow_meta=False)
        merged = merge_sections(merged, data)
    if overrides:
        cleaned = {section: override_values(values) for section, values in overrides.items()}
        validate_sections(cleaned, source=COMMAND_LINE, allow_meta=False)
        merged = merge_sections(merged, cleaned)
    sections = {name: _build_section(cls, merged.get(name) or {}) for name, cls in SECTIONS.items()}
    return ResolvedConfig(
        **sections,
        preset=preset,
        validated=validated,
        config_file=str(config_file) if config_file is not None else None,
        recipe=recipe or own_recipe,
    )
