"""The config sections: one frozen dataclass per component, its range checks, and :class:`ResolvedConfig`.

Every section checks its own values in ``__post_init__`` (so a preset, a config file, a flag and a Python caller
meet the same error, which names the field and, where one sets it, its flag). :mod:`anogen.config.resolve`
builds them; :class:`~anogen.verify.config.VerifyConfig` is the ``verify`` section.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args, get_origin, get_type_hints

from anogen.errors import InputError
from anogen.verify.config import VerifyConfig

Flip = Literal["horizontal", "vertical", "rotate90"]


# The flag that sets a field, named next to the field in range errors (the same check runs for presets, config
# files and Python callers, so the message names both). Sections differ per command only in ``train`` (fit) and
# ``sample`` (synth), so one table serves every command.
FLAGS: dict[str, str] = {
    "adapter.rank": "--rank",
    "train.steps": "--steps",
    "train.batch_size": "--batch-size",
    "train.gradient_accumulation": "--gradient-accumulation",
    "train.resolution": "--resolution",
    "train.mixed_precision": "--mixed-precision",
    "train.save_dtype": "--save-dtype",
    "sample.steps": "--steps",
    "sample.batch_size": "--batch-size",
    "sample.sampler": "--sampler",
    "sample.mixed_precision": "--mixed-precision",
}


def flag_of(section: str, name: str) -> str:
    """``"(--flag) "`` for a field a flag sets, else ``""`` (to put between a field's name and the rest)."""
    flag = FLAGS.get(f"{section}.{name}")
    return f"({flag}) " if flag else ""


def check_choices(config: Any, section: str) -> None:
    """Refuse a value outside a ``Literal`` field's choices (presets and flags are checked earlier, by type; this
    is what a Python caller meets)."""
    for name, hint in get_type_hints(type(config)).items():
        if get_origin(hint) is Literal and getattr(config, name) not in get_args(hint):
            choices = ", ".join(str(a) for a in get_args(hint))
            raise InputError(
                f"{section}.{name} {flag_of(section, name)}= {getattr(config, name)!r}: choose one of {choices}"
            )


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

    def __post_init__(self) -> None:
        # rank 0 is a valid model (SAIM alone, an ablation); fit asks for at least 1 (anogen/fit/plan.py).
        if self.rank < 0:
            raise InputError(f"adapter.rank {flag_of('adapter', 'rank')}must be >= 0 (got {self.rank})")
        for name in ("saim_width", "bcm_width"):
            width = getattr(self, name)
            if width is not None and width < 1:
                raise InputError(f"adapter.{name} must be at least 1, or null for the module's width (got {width})")


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

    def __post_init__(self) -> None:
        check_choices(self, "train")
        for name in ("steps", "batch_size", "gradient_accumulation", "resolution"):
            value = getattr(self, name)
            if value < 1:
                raise InputError(f"train.{name} {flag_of('train', name)}must be at least 1 (got {value})")
        if not self.learning_rate > 0:
            raise InputError(f"train.learning_rate (--lr) must be positive (got {self.learning_rate})")
        if self.max_grad_norm is not None:
            if not self.max_grad_norm >= 0:  # also refuses NaN
                raise InputError(
                    f"train.max_grad_norm (--max-grad-norm) must be >= 0, or null for no clipping "
                    f"(got {self.max_grad_norm})"
                )
            if self.max_grad_norm == 0:
                # 0 is the flag's way to say "no clipping" over a preset that clips; the config records null.
                object.__setattr__(self, "max_grad_norm", None)


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

    def __post_init__(self) -> None:
        check_choices(self, "sample")
        if self.count < 1:
            # A count of 0 would exit 0 having done nothing, which a CI job would take for success.
            raise InputError(
                f"sample.count (--count) = {self.count} asks for no samples: nothing to do",
                hint="pass --count 1 or more (accepted samples per defect type)",
            )
        for name in ("steps", "batch_size"):
            value = getattr(self, name)
            if value < 1:
                raise InputError(f"sample.{name} {flag_of('sample', name)}must be at least 1 (got {value})")
        if self.max_attempts is not None and self.max_attempts < 1:
            raise InputError(f"sample.max_attempts (--max-attempts) must be at least 1 (got {self.max_attempts})")
        if self.bcm_reference_every < 1:
            raise InputError(f"sample.bcm_reference_every must be >= 1 (got {self.bcm_reference_every})")


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

    def __post_init__(self) -> None:
        check_choices(self, "mask")
        threshold = self.threshold
        if isinstance(threshold, bool) or not (threshold == "otsu" or isinstance(threshold, (int, float))):
            raise InputError(f"mask.threshold (--threshold) takes a number in [0, 1] or otsu (got {threshold!r})")
        if threshold != "otsu" and not 0.0 <= threshold <= 1.0:  # also refuses NaN
            raise InputError(f"mask.threshold (--threshold) must lie in [0, 1] (distance from grey), got {threshold}")


SECTIONS: dict[str, type] = {
    "backbone": BackboneConfig,
    "adapter": AdapterConfig,
    "train": TrainConfig,
    "sample": SampleConfig,
    "mask": MaskConfig,
    "verify": VerifyConfig,
}


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
