"""One frozen config object per component, and presets that are nothing but serialised configs.

Precedence, lowest first: dataclass defaults < preset < config file (``--config``) < CLI flags / Python
kwargs. :func:`resolve` applies it and returns a :class:`ResolvedConfig` that outputs record verbatim.

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
"""

from __future__ import annotations

import dataclasses
import difflib
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, get_args, get_origin, get_type_hints

import yaml

from anogen.errors import PresetError
from anogen.verify.config import VerifyConfig

if TYPE_CHECKING:
    from anogen.data.model import CategoryKind

Flip = Literal["horizontal", "vertical", "rotate90"]


@dataclass(frozen=True)
class BackboneConfig:
    """Which base model to load.

    Args:
        id (`str`, defaults to `"toy"`): ``tiny`` (random, from configs), ``toy`` (shipped, pretrained on the
            toy world), a local diffusers folder, or a Hugging Face hub id with the SD-1.x layout.
        revision (`str`, *optional*): hub revision.
        cache_dir (`str`, *optional*): hub cache directory (defaults to the Hugging Face cache).
        seed (`int`, defaults to 0): seed of the random ``tiny`` backbone.
    """

    id: str = "toy"
    revision: str | None = None
    cache_dir: str | None = None
    seed: int = 0


@dataclass(frozen=True)
class AdapterConfig:
    """The dual-interrelated adapter: per-branch LoRA, SAIM coupling and BCM.

    Args:
        rank (`int`, defaults to 32): LoRA rank of every q, k, v, out projection, per branch.
        alpha (`float`, *optional*): LoRA alpha; ``None`` means alpha = rank (scale 1).
        coupling (`str`, defaults to `"saim"`): ``saim`` couples the branches after every attention
            module; ``none`` trains two independent LoRAs (an ablation).
        saim_width (`int`, *optional*): bottleneck width of SAIM; ``None`` is the attention module's width
            (full width, as the reference implementation).
        saim_init (`str`, defaults to `"zero"`): ``zero`` initialises SAIM's output projection to zero, so a fresh
            adapter reproduces the base model; ``default`` uses PyTorch's default initialisation for it too, as
            the reference implementation does (SAIM acts from step 0).
        text_encoder_lora (`bool`, defaults to False): a LoRA on the text encoder shared by both branches.
        text_encoder_rank (`int`, defaults to 8): its rank.
        bcm (`bool`, defaults to False): background compensation (object categories only).
        bcm_width (`int`, *optional*): hidden width of BCM's mixing MLP (Linear C->H -> Linear H->C, no
            activation); ``None`` is C. The reference implementation uses 320.
        prompt_whole (`str`): prompt of branch 0, the whole anomalous image.
        prompt_part (`str`): prompt of branch 1, the anomaly part alone on grey.
    """

    rank: int = 32
    alpha: float | None = None
    coupling: Literal["saim", "none"] = "saim"
    saim_width: int | None = None
    saim_init: Literal["zero", "default"] = "zero"
    text_encoder_lora: bool = False
    text_encoder_rank: int = 8
    bcm: bool = False
    bcm_width: int | None = None
    prompt_whole: str = "a vfx with sks"
    prompt_part: str = "sks"


@dataclass(frozen=True)
class TrainConfig:
    """How ``anogen fit`` trains one adapter.

    Args:
        resolution (`int`, defaults to 512): square training (and sampling) resolution in pixels.
        steps (`int`, defaults to 1000): optimiser steps per adapter.
        learning_rate (`float`, defaults to 1e-4): AdamW learning rate.
        batch_size (`int`, defaults to 1): (whole, part) pairs per step and process.
        gradient_accumulation (`int`, defaults to 1): micro-batches per optimiser step.
        max_grad_norm (`float`, *optional*): clip the adapter's gradient to this global L2 norm before each
            optimiser step; ``None`` does not clip. The reference implementation clips at 1.0.
        mixed_precision (`str`, defaults to `"no"`): ``no``, ``fp16`` (GPU) or ``bf16``.
        gradient_checkpointing (`bool`, defaults to False): trade compute for memory in the UNet.
        flips (`tuple[str, ...]`): augmentations allowed for this category, applied to image and mask alike.
        shots (`int`, *optional*): training images per defect type; ``None`` is floor(N/3), at least 1.
        checkpoint_every (`int`, defaults to 250): steps between resumable checkpoints (0: never).
        checkpoints_keep (`int`, defaults to 2): checkpoints kept on disk.
        validate_every (`int`, defaults to 250): steps between validation grids (0: only at the end).
        save_dtype (`str`, defaults to `"fp32"`): precision of the weights in ``adapter.safetensors``; ``fp16``
            halves the file (checkpoints stay fp32, so resuming is exact). The SD-1.x presets store fp16.
        seed (`int`, defaults to 0): seed of every random choice of training.
    """

    resolution: int = 512
    steps: int = 1000
    learning_rate: float = 1e-4
    batch_size: int = 1
    gradient_accumulation: int = 1
    max_grad_norm: float | None = None
    mixed_precision: Literal["no", "fp16", "bf16"] = "no"
    gradient_checkpointing: bool = False
    flips: tuple[Flip, ...] = ("horizontal", "vertical")
    shots: int | None = None
    checkpoint_every: int = 250
    checkpoints_keep: int = 2
    validate_every: int = 250
    save_dtype: Literal["fp32", "fp16"] = "fp32"
    seed: int = 0


@dataclass(frozen=True)
class SampleConfig:
    """How ``anogen synth`` samples.

    Args:
        sampler (`str`, defaults to `"dpmsolver++"`): ``dpmsolver++``, ``ddim``, ``euler`` or ``pndm`` (deterministic
            given the initial noise), or ``sde-dpmsolver++`` or ``ddpm`` (fresh noise at every step).
        steps (`int`, defaults to 30): denoising steps.
        guidance (`float`, defaults to 2.5): classifier-free guidance scale.
        negative_prompt (`str`, defaults to `""`): the unconditional prompt.
        batch_size (`int`, defaults to 4): pairs per denoising batch.
        count (`int`, defaults to 1000): accepted samples per defect type.
        max_attempts (`int`, *optional*): stop after this many attempts; ``None`` is 4 x count.
        mixed_precision (`str`, defaults to `"no"`): ``fp16``/``bf16`` for GPU sampling.
        bcm_uncond_reference (`str`, defaults to `"background"`): what BCM's reference pass sees for the
            unconditional half of classifier-free guidance: the same real ``background`` as the conditional half,
            or a ``grey`` image (the reference implementation), so that guidance also pushes towards the
            background. No effect without BCM or with guidance <= 1.
        bcm_reference_every (`int`, defaults to 1): with BCM, attempts ``i`` with the same ``i // every`` share a
            background (the reference implementation: 50, screw 10); 1 changes it at every attempt.
        bcm_reference_pool (`str`, defaults to `"all"`): which training normals' backgrounds are used: ``all``,
            or ``first_third`` (the first floor(N/3) in natural order, at least one; the reference implementation).
        seed (`int`, defaults to 0): global seed; attempt i's seed derives from it.
    """

    sampler: Literal["dpmsolver++", "sde-dpmsolver++", "ddpm", "ddim", "euler", "pndm"] = "dpmsolver++"
    steps: int = 30
    guidance: float = 2.5
    negative_prompt: str = ""
    batch_size: int = 4
    count: int = 1000
    max_attempts: int | None = None
    mixed_precision: Literal["no", "fp16", "bf16"] = "no"
    bcm_uncond_reference: Literal["background", "grey"] = "background"
    bcm_reference_every: int = 1
    bcm_reference_pool: Literal["all", "first_third"] = "all"
    seed: int = 0


@dataclass(frozen=True)
class MaskConfig:
    """How a part image becomes a mask (``anogen/masks.py``).

    Args:
        threshold (`float | str`, defaults to 0.12): distance from neutral grey, on a 0-1 scale, above
            which a pixel is defect; or ``"otsu"``.
        blur_sigma (`float`, defaults to 1.0): Gaussian smoothing of the distance map, in pixels.
        open_radius (`int`, defaults to 1): morphological opening radius (removes speckle).
        close_radius (`int`, defaults to 1): morphological closing radius (joins fragments).
        min_area (`int`, defaults to 16): connected components smaller than this many pixels are dropped.
        max_area_fraction (`float`, defaults to 0.5): masks covering more of the image are rejected.
        on_object_only (`bool`, defaults to False): reject masks that lie mostly off the object (needs object
            masks from ``anogen prior``).
        min_on_object (`float`, defaults to 0.5): with ``on_object_only``, the least fraction of a mask's pixels
            that must lie on the object.
    """

    threshold: float | Literal["otsu"] = 0.12
    blur_sigma: float = 1.0
    open_radius: int = 1
    close_radius: int = 1
    min_area: int = 16
    max_area_fraction: float = 0.5
    on_object_only: bool = False
    min_on_object: float = 0.5


SECTIONS: dict[str, type] = {
    "backbone": BackboneConfig,
    "adapter": AdapterConfig,
    "train": TrainConfig,
    "sample": SampleConfig,
    "mask": MaskConfig,
    "verify": VerifyConfig,
}
META_KEYS = ("extends", "description", "validated", "recipe")
COMMAND_LINE = "command-line options"  # the source name of overrides in error messages
# Named recipes (docs/presets.md). A preset that says `recipe: reference` holds the reference implementation's
# recipe; another recipe is an overlay file `presets/_recipes/<name>.yaml` applied on top of it.
RECIPES = ("reference", "fast")


@dataclass(frozen=True)
class ResolvedConfig:
    """Every section after precedence was applied, plus where the values came from."""

    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    adapter: AdapterConfig = field(default_factory=AdapterConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    mask: MaskConfig = field(default_factory=MaskConfig)
    verify: VerifyConfig = field(default_factory=VerifyConfig)
    preset: str | None = None
    validated: bool = False
    config_file: str | None = None
    recipe: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return to_jsonable(dataclasses.asdict(self))


def to_jsonable(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


# --------------------------------------------------------------------------------------------- presets


def presets_dir() -> Path:
    """The folder holding the shipped presets (``ANOGEN_PRESETS_DIR`` overrides, for tests)."""
    override = os.environ.get("ANOGEN_PRESETS_DIR")
    if override:
        return Path(override)
    packaged = Path(__file__).parent / "_presets"
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parent.parent / "presets"


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


def validate_sections(data: Mapping[str, Any], *, source: str, allow_meta: bool) -> None:
    """Check section and field names and value types; raise a PresetError naming the first bad key."""
    for key, section in data.items():
        if key in META_KEYS:
            if not allow_meta:
                raise PresetError(f"{source}: {key!r} is only allowed in presets")
            continue
        if key not in SECTIONS:
            known = ", ".join([*SECTIONS, *META_KEYS])
            raise PresetError(f"{source}: unknown section {key!r} (known: {known})")
        if section is None:
            continue
        if not isinstance(section, Mapping):
            raise PresetError(f"{source}: section {key!r} must be a mapping")
        cls = SECTIONS[key]
        hints = get_type_hints(cls)
        names = {f.name for f in fields(cls)}
        for name, value in section.items():
            if name not in names:
                close = difflib.get_close_matches(str(name), sorted(names), n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise PresetError(f"{source}: unknown key {key}.{name}{hint}")
            if not _value_fits(value, hints[name]):
                if get_origin(hints[name]) is Literal:
                    # A choice: name the choices, not the type ("unknown sampler 'foo'; choose one of ...").
                    label = name.replace("_", " ")
                    choices = ", ".join(str(a) for a in get_args(hints[name]))
                    if source == COMMAND_LINE:
                        raise PresetError(f"unknown {label} {value!r} ({key}.{name}); choose one of {choices}")
                    raise PresetError(
                        f"{source}: {key}.{name} = {value!r}: unknown {label}; choose one of {choices}"
                    )
                items = get_args(hints[name])[:1]
                if (
                    get_origin(hints[name]) in (tuple, list)
                    and items
                    and get_origin(items[0]) is Literal
                    and isinstance(value, (list, tuple))
                ):
                    # A list of choices (train.flips): name the unknown items and the choices, not the type.
                    choices = ", ".join(str(a) for a in get_args(items[0]))
                    bad = [v for v in value if v not in get_args(items[0])]
                    what = f"{bad[0]!r} is not" if len(bad) == 1 else f"{', '.join(map(repr, bad))} are not"
                    where = f"{key}.{name}" if source == COMMAND_LINE else f"{source}: {key}.{name}"
                    raise PresetError(f"{where} = {list(value)!r}: {what} one of {choices}")
                raise PresetError(f"{source}: {key}.{name} = {value!r} does not fit type {_type_name(hints[name])}")


def _type_name(tp: Any) -> str:
    if isinstance(tp, type) and get_origin(tp) is None:
        return tp.__name__  # "int", not "<class 'int'>"
    return str(tp).replace("typing.", "")


def _value_fits(value: Any, tp: Any) -> bool:
    origin = get_origin(tp)
    args = get_args(tp)
    if tp is Any:
        return True
    if origin is Literal:
        return value in args
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            return False
        inner = args[0] if args else Any
        return all(_value_fits(v, inner) for v in value)
    if args and origin is not None:  # a Union (X | Y)
        return any(_value_fits(value, a) for a in args)
    if tp is type(None):
        return value is None
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(tp, type):
        return isinstance(value, tp)
    return True


def _build_section(cls: type, values: Mapping[str, Any]) -> Any:
    hints = get_type_hints(cls)
    kwargs = {}
    for name, value in values.items():
        if get_origin(hints[name]) is tuple and isinstance(value, list):
            value = tuple(value)
        kwargs[name] = value
    return cls(**kwargs)


def recipe_overlay(name: str) -> dict[str, Any]:
    """The sections recipe ``name`` sets over a preset that follows the reference recipe (empty for
    ``reference``)."""
    if name not in RECIPES:
        raise PresetError(f"unknown recipe {name!r}", hint=f"choose one of: {', '.join(RECIPES)}")
    if name == "reference":
        return {}
    raw = load_preset_raw(f"_recipes/{name}")
    return {k: v for k, v in raw.items() if k not in META_KEYS}


def resolve(
    preset: str | None = None,
    config_file: str | Path | None = None,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
    *,
    recipe: str | None = None,
) -> ResolvedConfig:
    """Apply defaults < preset < recipe < config file < overrides and build every section's config object.

    Args:
        preset (`str`, *optional*): a shipped preset name such as ``mvtec/bottle``.
        recipe (`str`, *optional*): ``reference`` or ``fast`` (docs/presets.md); only for presets that follow a
            recipe (every SD-1.x preset); ``None`` keeps the preset's own (``reference``).
        config_file (`str | Path`, *optional*): a YAML file with the same sections as a preset.
        overrides (`Mapping`, *optional*): ``{section: {field: value}}``; ``None`` values are ignored so
            that unset CLI flags fall through to the layers below.
    """
    merged: dict[str, Any] = {}
    validated = False
    own_recipe = None
    if preset:
        merged = load_preset_raw(preset)
        validated = bool(merged.get("validated", False))
        own_recipe = merged.get("recipe")
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
        cleaned = {s: {k: v for k, v in vals.items() if v is not None} for s, vals in overrides.items()}
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
