"""One frozen config object per component, and presets that are nothing but serialised configs.

Precedence, lowest first: dataclass defaults < the config recorded at fit (synth: each adapter's ``adapter.json``)
< preset < recipe (``--recipe``) < config file (``--config``) < CLI flags / Python overrides. :func:`resolve`
applies it, the one function that does, and returns a :class:`ResolvedConfig` that outputs record verbatim;
commands pass what they were asked for as a :class:`ConfigRequest` and the library resolves it.

A preset is sectioned YAML::

    extends: mvtec/_object        # optional: another preset whose values this one overrides
    description: "MVTec AD bottle"
    validated: false              # true once its values were checked on the real data set
    backbone: {id: runwayml/stable-diffusion-v1-5}
    adapter: {rank: 32, coupling: saim, bcm: true}
    train: {resolution: 512, steps: 1000, flips: [horizontal]}
    sample: {sampler: dpmsolver++, steps: 30, guidance: 2.5}
    mask: {threshold: 0.12, min_area: 64}
    verify: {mode: score}          # anogen/verify/config.py: VerifyConfig

Every key must be a field of its section's dataclass; anything else is a :class:`PresetError` that names it.
Values out of range are refused by the section's own class, whichever layer set them.

Modules: :mod:`~anogen.config.sections` (the dataclasses and their range checks), :mod:`~anogen.config.checks`
(names and types of a layer's keys), :mod:`~anogen.config.presets` (preset files, recipes, the preset a category
gets) and :mod:`~anogen.config.resolve` (precedence). No torch.
"""

from anogen.config.checks import COMMAND_LINE, META_KEYS, validate_sections
from anogen.config.presets import (
    RECIPES,
    PresetChoice,
    choose_preset,
    list_presets,
    load_preset_raw,
    merge_sections,
    preset_for,
    preset_line,
    presets_dir,
    read_yaml_mapping,
    recipe_overlay,
)
from anogen.config.resolve import ConfigRequest, override_values, recorded_layer, resolve
from anogen.config.sections import (
    FLAGS,
    SECTIONS,
    AdapterConfig,
    BackboneConfig,
    Flip,
    MaskConfig,
    ResolvedConfig,
    SampleConfig,
    TrainConfig,
    flag_of,
    to_jsonable,
)
from anogen.verify.config import VerifyConfig

__all__ = [
    "COMMAND_LINE",
    "FLAGS",
    "META_KEYS",
    "RECIPES",
    "SECTIONS",
    "AdapterConfig",
    "BackboneConfig",
    "ConfigRequest",
    "Flip",
    "MaskConfig",
    "PresetChoice",
    "ResolvedConfig",
    "SampleConfig",
    "TrainConfig",
    "VerifyConfig",
    "choose_preset",
    "flag_of",
    "list_presets",
    "load_preset_raw",
    "merge_sections",
    "override_values",
    "preset_for",
    "preset_line",
    "presets_dir",
    "read_yaml_mapping",
    "recipe_overlay",
    "recorded_layer",
    "resolve",
    "to_jsonable",
    "validate_sections",
]
