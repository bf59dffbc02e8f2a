"""``fit``: train one dual-interrelated adapter per defect type of a category (accelerate drives it).

One training step, per (whole, part) pair of the batch (see docs/architecture.md, "The dual batch layout"):

* the whole image and its part (image x mask, 0 = neutral grey outside the mask) are resized to
  ``train.resolution`` in [-1, 1], under one of the flips the preset allows (the same flip for image, mask and
  background), and encoded once with the frozen VAE (the mean of the latent distribution x scaling factor);
  the latents of every (image, flip) are cached, since the few training images never change;
* one timestep shared by both branches, independent noise per branch; with BCM the background latent of the
  training image gets its own noise at the same timestep;
* loss = MSE between the noise prediction and the noise (or the velocity for v-prediction backbones),
  averaged over both branches; AdamW on ``adapter.trainable_parameters()``.

Every random draw of step ``s`` comes from ``derive_seed(seed, category, defect, "step", s, micro)``: a resumed
run therefore continues exactly as an uninterrupted one, and a data-parallel run draws the same global batch as
one process with the same effective batch (each process takes its slice of it).

Several processes (``accelerate launch``) split the work in one of two ways (``parallel``):

* ``defects``: defect type ``i`` is trained by process ``i % world``, each adapter exactly as in a
  one-process run;
* ``data``: every process trains the same adapter on its slice of the global batch; gradients are averaged
  with an explicit all-reduce, the main process writes every file.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
from PIL import Image

from anogen import __version__
from anogen.config import ResolvedConfig, to_jsonable
from anogen.data.model import Category, CategoryKind, DefectSample
from anogen.data.split import Split, few_shot_split
from anogen.errors import BackboneError, CompatibilityError, DataError, InputError
from anogen.fit_estimate import estimate_fit_seconds, measured_s_per_step
from anogen.io import (
    canonical_safetensors,
    load_mask,
    load_rgb,
    safe_name,
    save_png_atomic,
    write_json_atomic,
    write_text_atomic,
)
from anogen.memory import ACTIVATION_FACTOR, CHECKPOINTING_FACTOR  # noqa: F401  (re-exported)
from anogen.model.spec import describe_backbone
from anogen.progress import ProgressCallback, report
from anogen.seeding import derive_seed

if TYPE_CHECKING:
    from accelerate import Accelerator

    from anogen.model.backbone import Backbone
    from anogen.model.dual import DualAdapter

logger = logging.getLogger(__name__)

ParallelMode = Literal["auto", "defects", "data"]
CHECKPOINT_SCHEMA_VERSION = 1
VALIDATION_PAIRS = 2
VALIDATION_SAMPLER_STEPS = 12
# Fields of the train config that may change between a checkpoint and the run that resumes it: they decide
# when to stop, save or validate, not what a step computes.
RESUMABLE_TRAIN_FIELDS = ("steps", "checkpoint_every", "checkpoints_keep", "validate_every", "save_dtype")


# ------------------------------------------------------------------------------------------------ results


@dataclass
class FitResult:
    """What :func:`fit` did for one defect type.

    Attributes:
        category, defect: the names as read from the data set.
        folder: ``out/<category>/<defect>/`` (names through ``safe_name``).
        steps_done: optimiser steps the saved adapter has seen.
        final_loss: mean training loss of the last logged step (``None`` when nothing was trained here).
        status: ``trained``, ``resumed``, ``complete`` (an existing finished adapter, left alone) or
            ``other-process`` (trained by another process of a multi-process run).
        adapter: the trained adapter, in memory (``None`` unless this process trained it).
    """

    category: str
    defect: str
    folder: Path
    steps_done: int
    final_loss: float | None
    status: str
    adapter: DualAdapter | None = field(default=None, repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {
            "category": self.category,
            "defect": self.defect,
            "folder": str(self.folder),
            "steps_done": self.steps_done,
            "final_loss": self.final_loss,
            "status": self.status,
        }


@dataclass(frozen=True)
class DefectPlan:
    """One adapter of a fit: its data and where it goes."""

    defect: str
    folder: Path
    split: Split
    process: int
    resume_from: int | None
    complete: bool
    # The steps this adapter trains to: its recorded run's target on a resume, else train.steps.
    steps: int = 0
    # The recorded target when an explicit --steps changes it (announced; synth outputs of it become stale).
    recorded_steps: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "defect": self.defect,
            "folder": str(self.folder),
            "train": [s.stem for s in self.split.train],
            "held_out": [s.stem for s in self.split.held_out],
            "process": self.process,
            "resume_from": self.resume_from,
            "complete": self.complete,
            "steps": self.steps,
            "recorded_steps": self.recorded_steps,
        }


@dataclass(frozen=True)
class FitPlan:
    """Everything :func:`fit` is about to do, known without loading a model (``anogen fit --dry-run``).

    Attributes:
        trainable_parameters: parameters of one adapter (``None`` when the backbone's configs are not local).
        backbone_parameters: frozen parameters of UNet + VAE + text encoder.
        estimated_peak_bytes: the memory estimate of docs/fit.md for one process (``None`` as above).
    """

    category: str
    out: Path
    defects: list[DefectPlan]
    steps: int
    batch_size: int
    gradient_accumulation: int
    num_processes: int
    parallel: str
    resolution: int
    device: str
    mixed_precision: str
    gradient_checkpointing: bool
    bcm: bool
    prior: Path | None
    backbone: str
    trainable_parameters: int | None
    backbone_parameters: int | None
    estimated_peak_bytes: int | None
    native_resolution: int | None = None
    estimated_seconds: float | None = None
    estimate_basis: str = "unknown"
    # weights, adapter_and_optimizer, activations, overhead, total (bytes) and smallest_gpu_gib (anogen.memory)
    estimated_peak_parts: dict[str, Any] | None = None

    @property
    def effective_batch(self) -> int:
        """Pairs per optimiser step, over every process that trains the same adapter."""
        world = self.num_processes if self.parallel == "data" else 1
        return self.batch_size * self.gradient_accumulation * world

    def to_dict(self) -> dict[str, Any]:
        return {
            "category": self.category,
            "out": str(self.out),
            "defects": [d.to_dict() for d in self.defects],
            "steps": self.steps,
            "batch_size": self.batch_size,
            "gradient_accumulation": self.gradient_accumulation,
            "effective_batch": self.effective_batch,
            "num_processes": self.num_processes,
            "parallel": self.parallel,
            "resolution": self.resolution,
            "device": self.device,
            "mixed_precision": self.mixed_precision,
            "gradient_checkpointing": self.gradient_checkpointing,
            "bcm": self.bcm,
            "prior": str(self.prior) if self.prior is not None else None,
            "backbone": self.backbone,
            "trainable_parameters": self.trainable_parameters,
            "backbone_parameters": self.backbone_parameters,
            "estimated_peak_bytes": self.estimated_peak_bytes,
            "native_resolution": self.native_resolution,
            "estimated_seconds": self.estimated_seconds,
            "estimate_basis": self.estimate_basis,
            "estimated_peak_parts": self.estimated_peak_parts,
        }


# --------------------------------------------------------------------------------------------- planning


def _world() -> tuple[int, int]:
    """(process index, number of processes) of an ``accelerate launch`` / ``torchrun`` run, read from its env."""
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def resolve_parallel(parallel: ParallelMode, num_defects: int, num_processes: int) -> str:
    """``auto`` -> ``defects`` when several defect types share several processes, else ``data``."""
    if parallel not in ("auto", "defects", "data"):
        raise InputError(f"--parallel must be auto, defects or data (got {parallel!r})")
    if parallel != "auto":
        return parallel
    return "defects" if num_processes > 1 and num_defects > 1 else "data"


def _select_defects(category: Category, defects: Sequence[str] | None) -> list[str]:
    if category.errors:
        first = category.errors[0]
        raise DataError(f"{first.path}: {first.message}" if first.path else first.message, path=None)
    names = sorted(category.defects)
    if not names:
        raise DataError(f"category {category.name!r} has no defect types to learn", path=category.root)
    if not defects:
        return names
    unknown = [d for d in defects if d not in category.defects]
    if unknown:
        raise InputError(
            f"category {category.name!r} has no defect type {unknown[0]!r}",
            hint=f"defect types: {', '.join(names)}",
        )
    return list(dict.fromkeys(defects))


def _split(category: Category, defect: str, shots: int | None) -> Split:
    split = few_shot_split(category.defects[defect], shots)
    if not split.train:
        raise DataError(f"defect type {defect!r} of {category.name!r} has no training images after the split")
    for sample in split.train:
        if sample.mask is None:
            raise DataError(
                f"{sample.image.path}: training image of defect type {defect!r} has no mask; fit needs masks",
                path=sample.image.path,
            )
    return split


def _check_train_config(config: ResolvedConfig, device: str) -> None:
    train = config.train
    for name in ("steps", "batch_size", "gradient_accumulation", "resolution"):
        if getattr(train, name) < 1:
            raise InputError(f"train.{name} must be at least 1 (got {getattr(train, name)})")
    if not train.learning_rate > 0:
        raise InputError(f"train.learning_rate must be positive (got {train.learning_rate})")
    if config.adapter.rank < 1:
        raise InputError(f"adapter.rank must be at least 1 (got {config.adapter.rank})")
    if train.max_grad_norm is not None and not train.max_grad_norm > 0:
        raise InputError(f"train.max_grad_norm must be positive, or null for no clipping (got {train.max_grad_norm})")
    for name in ("saim_width", "bcm_width"):
        width = getattr(config.adapter, name)
        if width is not None and width < 1:
            raise InputError(f"adapter.{name} must be at least 1, or null for the module's width (got {width})")
    if train.mixed_precision == "fp16" and not device.startswith("cuda"):
        raise InputError(
            f"--mixed-precision fp16 needs a CUDA GPU (this run is on {device})",
            hint="use --mixed-precision bf16 or no on the CPU",
        )


def _default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def _count_parameters(configs: dict[str, dict[str, Any]], config: ResolvedConfig) -> tuple[int | None, int]:
    """(trainable adapter parameters, frozen backbone parameters), counted on the meta device (no memory)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    def clean(cfg: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in cfg.items() if not k.startswith("_")}

    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(clean(configs["unet"]))
        vae = AutoencoderKL.from_config(clean(configs["vae"]))
        te_cfg = {k: v for k, v in clean(configs["text_encoder"]).items() if k != "architectures"}
        text_encoder = CLIPTextModel(CLIPTextConfig(**te_cfg))
    frozen = sum(p.numel() for m in (unet, vae, text_encoder) for p in m.parameters())
    trainable: int | None
    try:
        from anogen.model.dual import DualAdapter

        with torch.device("meta"):
            adapter = DualAdapter.from_unet(
                unet, config.adapter, text_encoder=text_encoder if config.adapter.text_encoder_lora else None
            )
        trainable = int(adapter.num_trainable())
    except Exception as exc:  # noqa: BLE001 - the count is informative; a dry run must not fail on it
        logger.debug("cannot count adapter parameters on the meta device: %s", exc)
        trainable = None
    return trainable, int(frozen)


def estimate_peak_bytes(unet_config: dict[str, Any], **sizes: Any) -> int:
    """Estimated peak memory of one training process, in bytes: :func:`anogen.memory.estimate_peak`'s total
    (weights + adapter and optimizer state + activations + 10 % overhead; formula in docs/fit.md), with its
    keyword arguments (trainable, frozen, resolution, vae_scale_factor, batch_size, mixed_precision,
    gradient_checkpointing, bcm)."""
    from anogen.memory import estimate_peak

    return estimate_peak(unet_config, **sizes).total


def _resume_key(config: ResolvedConfig, backbone_hash: str | None, split: Split, data_world: int) -> dict[str, Any]:
    """What a checkpoint must agree on with the run that resumes it (everything a step computes with)."""
    train = {k: v for k, v in to_jsonable(config.to_dict()["train"]).items() if k not in RESUMABLE_TRAIN_FIELDS}
    return {
        "adapter": config.to_dict()["adapter"],
        "train": train,
        "backbone": {"id": config.backbone.id, "seed": config.backbone.seed, "content_hash": backbone_hash},
        "split": split.to_dict()["train"],
        "data_parallel_processes": data_world,
    }


def _with_new_defaults(old: dict[str, Any]) -> dict[str, Any]:
    """An older run's key with the fields added since filled in with their defaults.

    Every field added to ``adapter`` or ``train`` defaults to the behaviour from before it existed (e.g.
    ``saim_init: zero``), so a fit made by an earlier anogen resumes instead of being refused for a key it could
    not have written.
    """
    from dataclasses import asdict

    from anogen.config import AdapterConfig, TrainConfig

    filled = dict(old)
    for section, defaults in (("adapter", asdict(AdapterConfig())), ("train", asdict(TrainConfig()))):
        if isinstance(filled.get(section), dict):
            missing = {k: v for k, v in to_jsonable(defaults).items() if k not in filled[section]}
            if section == "train":
                missing = {k: v for k, v in missing.items() if k not in RESUMABLE_TRAIN_FIELDS}
            filled[section] = {**filled[section], **missing}
    return filled


def _diff_keys(old: Any, new: Any, prefix: str = "") -> str | None:
    """The first path where two JSON values differ, with both values, or ``None``."""
    if isinstance(old, dict) and isinstance(new, dict):
        for key in sorted(set(old) | set(new)):
            found = _diff_keys(old.get(key), new.get(key), f"{prefix}.{key}" if prefix else key)
            if found:
                return found
        return None
    if old != new:
        return f"{prefix} = {old!r} there, {new!r} now"
    return None


def _checkpoints(folder: Path) -> list[Path]:
    root = folder / "checkpoints"
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and p.name.startswith("step-") and (p / "state.json").is_file()]
    return sorted(found, key=lambda p: int(p.name.split("-")[1]))


def _read_state(checkpoint: Path) -> dict[str, Any]:
    try:
        return json.loads((checkpoint / "state.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CompatibilityError(f"{checkpoint / 'state.json'}: unreadable checkpoint ({exc})") from exc


def _check_resume(checkpoint: Path, key: dict[str, Any], *, check_backbone_hash: bool) -> dict[str, Any]:
    state = _read_state(checkpoint)
    if state.get("schema_version") != CHECKPOINT_SCHEMA_VERSION:
        raise CompatibilityError(
            f"{checkpoint}: checkpoint schema {state.get('schema_version')} is not {CHECKPOINT_SCHEMA_VERSION}",
            hint="start over in another --out folder",
        )
    old = _with_new_defaults(dict(state.get("resume_key", {})))
    new = dict(key)
    if not check_backbone_hash:
        # The dry run has not loaded the backbone, so its hash is not known yet; fit checks it later.
        old.get("backbone", {}).pop("content_hash", None)
        new = {**new, "backbone": {k: v for k, v in new["backbone"].items() if k != "content_hash"}}
    diff = _diff_keys(old, new)
    if diff:
        raise CompatibilityError(
            f"cannot resume from {checkpoint}: it was made with another config or backbone ({diff})",
            hint="rerun with the original settings, or start over in another --out folder (without --resume)",
        )
    return state


def _check_record(adapter_json: Path, key: dict[str, Any]) -> int:
    """Steps done by a finished adapter, after checking that ``adapter.json`` was made with this config."""
    try:
        record = json.loads(adapter_json.read_text(encoding="utf-8"))
        config = record["config"]
        old = {
            "adapter": config["adapter"],
            "train": {k: v for k, v in config["train"].items() if k not in RESUMABLE_TRAIN_FIELDS},
            "backbone": {"id": config["backbone"]["id"], "seed": config["backbone"]["seed"]},
            "split": record["split"]["train"],
        }
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CompatibilityError(f"{adapter_json}: not an adapter record this anogen can resume ({exc})") from exc
    new = {**key, "backbone": {k: key["backbone"][k] for k in ("id", "seed")}}
    new.pop("data_parallel_processes", None)
    diff = _diff_keys(_with_new_defaults(old), new)
    if diff:
        raise CompatibilityError(
            f"cannot resume {adapter_json.parent}: its adapter was made with another config or backbone ({diff})",
            hint="rerun with the original settings, or start over in another --out folder (without --resume)",
        )
    return int(record.get("steps_done", 0))


def _recorded_target(done: int | None, state: dict[str, Any] | None) -> int | None:
    """The steps the recorded run of an adapter folder aims at: its latest checkpoint's target when that
    checkpoint is newer than the finished adapter (a continued run), else the finished adapter's steps."""
    newer = state is not None and (done is None or int(state["step"]) > done)
    if newer and state is not None and isinstance(state.get("target_steps"), int):
        return int(state["target_steps"])
    return done


def _existing_state(
    folder: Path, key: dict[str, Any], resume: bool, steps: int, retarget: bool = False
) -> tuple[int | None, bool, int, int | None]:
    """(step to resume from, already complete, target steps, recorded target changed by ``retarget``) for one
    adapter folder; refuses to silently overwrite a fit.

    A resume continues the recorded run to its recorded target; only ``retarget`` (an explicit ``--steps``) trains
    to ``steps`` instead. Checkpoints of older versions record no target: then ``steps`` is the target.
    """
    checkpoints = _checkpoints(folder)
    adapter_json = folder / "adapter.json"
    if not resume:
        if checkpoints or adapter_json.is_file():
            raise InputError(
                f"{folder} already holds a fit",
                hint="pass --resume to continue it, or choose another --out",
            )
        return None, False, steps, None
    done = _check_record(adapter_json, key) if adapter_json.is_file() else None
    state = _check_resume(checkpoints[-1], key, check_backbone_hash=False) if checkpoints else None
    recorded = _recorded_target(done, state)
    target = steps if retarget or recorded is None else recorded
    changed = recorded if recorded is not None and recorded != target else None
    if done is not None and done >= target:
        return done, True, done, None
    if state is None:
        if done is not None:
            raise CompatibilityError(
                f"{folder} holds an adapter of {done} steps but no checkpoint to continue it from",
                hint="train again in another --out (with --checkpoint-every above 0)",
            )
        return None, False, target, changed
    step = int(state["step"])
    if step > target:
        raise InputError(f"{checkpoints[-1]} is already past --steps {target}", hint=f"pass --steps {step} or more")
    return step, False, target, changed


def plan_fit(
    category: Category,
    config: ResolvedConfig,
    out: str | Path,
    *,
    defects: Sequence[str] | None = None,
    prior_dir: str | Path | None = None,
    resume: bool = False,
    parallel: ParallelMode = "auto",
    num_processes: int | None = None,
    device: str | None = None,
    retarget: bool = False,
    prior_pending: bool = False,
) -> FitPlan:
    """Validate everything a fit needs and describe it, without loading a model.

    Every problem a user can fix stops here, before any training: unknown or empty defect types, missing masks,
    a split that leaves no training image, BCM without a prior (or on a texture), a backbone folder without a
    component, a checkpoint of another config under ``resume``, an output folder that already holds a fit.

    Args:
        category (`Category`): as returned by ``anogen.data.read_category``.
        config (`ResolvedConfig`): the resolved preset/config/flags.
        out (`str | Path`): the runs root; adapters go to ``out/<category>/<defect>/``.
        defects (`Sequence[str]`, *optional*): defect types to train (all by default).
        prior_dir (`str | Path`, *optional*): ``anogen prior`` output (needed when ``adapter.bcm``).
        resume (`bool`, defaults to False): continue each adapter's recorded run, from its latest checkpoint, to
            its recorded target (finished adapters are complete).
        parallel (`str`, defaults to `"auto"`): ``defects``, ``data`` or ``auto`` (see the module docstring).
        num_processes (`int`, *optional*): processes of the run (read from the launcher's env by default).
        device (`str`, *optional*): ``cuda`` or ``cpu`` (for the precision check and the memory estimate).
        retarget (`bool`, defaults to False): with ``resume``, train to ``config.train.steps`` instead of each
            recorded target (the CLI sets it when ``--steps`` is given); ``DefectPlan.recorded_steps`` says where
            that changes a target.
        prior_pending (`bool`, defaults to False): ``prior_dir`` is the prior ``fit`` will build before training
            (``anogen.autoprior``; a dry run builds nothing): its files are not checked, and the plan (parameter
            count, memory and time) is still the BCM fit's.

    Returns:
        `FitPlan`.

    Raises:
        InputError: (and subclasses) for every bad input above, one line each.
    """
    device = device or _default_device()
    world = num_processes if num_processes is not None else _world()[1]
    _check_train_config(config, device)
    names = _select_defects(category, defects)
    mode = resolve_parallel(parallel, len(names), world)
    bcm = bool(config.adapter.bcm)
    prior = Path(prior_dir) if prior_dir is not None else None
    if bcm:
        _check_bcm(category, prior)
    if prior is not None and not prior.exists() and not prior_pending:
        raise InputError(f"prior folder {prior} does not exist", hint="run `anogen prior DATA --out DIR` first")
    # The same description load_backbone starts from: a misspelt or missing backbone stops here, dry run or not.
    described = describe_backbone(config.backbone.id, cache_dir=config.backbone.cache_dir,
                                  revision=config.backbone.revision)
    configs = described.configs
    multiple = described.resolution_multiple
    if multiple is not None and config.train.resolution % multiple:
        raise InputError(
            f"--resolution {config.train.resolution} is not a multiple of {multiple} "
            f"(the backbone downsamples by {described.vae_scale_factor} in the VAE and "
            f"{multiple // (described.vae_scale_factor or 1)} in the UNet)"
        )
    data_world = world if mode == "data" else 1
    plans = []
    for index, name in enumerate(names):
        split = _split(category, name, config.train.shots)
        if bcm and not prior_pending:
            _background_sources(category, name, split.train, prior)  # type: ignore[arg-type]
        folder = Path(out) / safe_name(category.name) / safe_name(name)
        key = _resume_key(config, None, split, data_world)
        resume_from, complete, target, recorded = _existing_state(folder, key, resume, config.train.steps, retarget)
        process = index % world if mode == "defects" else 0
        plans.append(DefectPlan(name, folder, split, process, resume_from, complete, target, recorded))
    trainable = frozen = peak = seconds = None
    basis = "unknown"
    parts: dict[str, Any] | None = None
    if configs is not None:
        from anogen.memory import estimate_peak

        trainable, frozen = _count_parameters(configs, config)
        vae_factor = described.vae_scale_factor or 8
        estimate = estimate_peak(
            configs["unet"],
            trainable=trainable or 0,
            frozen=frozen,
            resolution=config.train.resolution,
            vae_scale_factor=vae_factor,
            batch_size=config.train.batch_size,
            mixed_precision=config.train.mixed_precision,
            gradient_checkpointing=config.train.gradient_checkpointing,
            bcm=bcm,
        )
        peak, parts = estimate.total, estimate.to_dict()
        # Wall time: with --parallel defects the processes train their adapters side by side, so the busiest
        # process's steps count; otherwise every adapter runs one after another (data parallelism keeps the time
        # per step: each process takes its own batch).
        per_process: dict[int, int] = {}
        for p in plans:
            per_process[p.process] = per_process.get(p.process, 0) + (
                0 if p.complete else p.steps - (p.resume_from or 0)
            )
        steps_left = max(per_process.values(), default=0)
        seconds, basis = estimate_fit_seconds(
            configs["unet"],
            resolution=config.train.resolution,
            vae_scale_factor=vae_factor,
            rows_per_step=config.train.batch_size * config.train.gradient_accumulation * (3 if bcm else 2),
            steps=steps_left,
            device=device,
            measured_s_per_step=measured_s_per_step([p.folder for p in plans]),
        )
    return FitPlan(
        category=category.name,
        out=Path(out),
        defects=plans,
        steps=config.train.steps,
        batch_size=config.train.batch_size,
        gradient_accumulation=config.train.gradient_accumulation,
        num_processes=world,
        parallel=mode,
        resolution=config.train.resolution,
        device=device,
        mixed_precision=config.train.mixed_precision,
        gradient_checkpointing=config.train.gradient_checkpointing,
        bcm=bcm,
        prior=prior,
        backbone=config.backbone.id,
        trainable_parameters=trainable,
        backbone_parameters=frozen,
        estimated_peak_bytes=peak,
        native_resolution=described.native_resolution,
        estimated_seconds=seconds,
        estimate_basis=basis,
        estimated_peak_parts=parts,
    )


# ------------------------------------------------------------------------------------------- BCM inputs


def _check_bcm(category: Category, prior: Path | None) -> None:
    if category.kind is CategoryKind.TEXTURE:
        raise InputError(
            f"category {category.name!r} is a texture: background compensation (BCM) does not apply",
            hint="pass --bcm off",
        )
    if prior is None:
        raise InputError(
            "BCM is on but no prior was given: its backgrounds come from `anogen prior`",
            hint="run `anogen prior DATA --out PRIORS` and pass --prior PRIORS, or pass --bcm off",
        )


def _background_sources(category: Category, defect: str, samples: Sequence[DefectSample], prior: Path) -> list[Path]:
    """The object mask (from the prior) of each training image; its background is the image with it blacked out.

    ``anogen prior`` writes backgrounds for normal images only, and an object mask for every image, defect
    images included; the background of a training image is therefore built here from its own object mask.
    """
    from anogen.priors import _split_of, load_prior

    record = load_prior(prior, category.name)
    if not record.is_object:
        raise InputError(
            f"the prior in {record.folder} marks {category.name!r} as a texture: it has no backgrounds for BCM",
            hint="pass --bcm off",
        )
    paths = []
    for sample in samples:
        split = _split_of(category, sample.image, f"test/{safe_name(defect)}")
        row = record.find(split, sample.stem)
        if row is None or row.object is None or not (record.folder / row.object).is_file():
            raise DataError(
                f"the prior in {record.folder} has no object mask for {sample.image.path}",
                hint=f"rerun `anogen prior` on this data into {prior}",
            )
        paths.append(record.folder / row.object)
    return paths


# ---------------------------------------------------------------------------------------------- the data


def dihedral_variants(flips: Sequence[str]) -> list[tuple[int, bool]]:
    """The distinct transforms generated by the allowed flips, as (quarter turns, mirror first), identity first.

    ``horizontal`` mirrors left-right, ``vertical`` top-bottom (= mirror + half turn), ``rotate90`` turns by 90°.
    """
    generators = []
    for flip in flips:
        if flip == "horizontal":
            generators.append((0, True))
        elif flip == "vertical":
            generators.append((2, True))
        elif flip == "rotate90":
            generators.append((1, False))
        else:
            raise InputError(f"unknown flip {flip!r} (choose from horizontal, vertical, rotate90)")
    probe = np.arange(9).reshape(3, 3)

    def apply(arr: np.ndarray, op: tuple[int, bool]) -> np.ndarray:
        return np.rot90(arr[:, ::-1] if op[1] else arr, k=op[0])

    def compose(a: tuple[int, bool], b: tuple[int, bool]) -> tuple[int, bool]:
        # The single (k, mirror) equal to applying a, then b; found on the probe (8 candidates).
        target = apply(apply(probe, a), b)
        for k in range(4):
            for mirror in (False, True):
                if np.array_equal(apply(probe, (k, mirror)), target):
                    return (k, mirror)
        raise AssertionError("dihedral group is closed")

    found = [(0, False)]
    frontier = [(0, False)]
    while frontier:
        nxt = []
        for element in frontier:
            for gen in generators:
                product = compose(element, gen)
                if product not in found:
                    found.append(product)
                    nxt.append(product)
        frontier = nxt
    return found


def _transform(arr: np.ndarray, op: tuple[int, bool]) -> np.ndarray:
    """Apply a dihedral transform to an (H, W, ...) array."""
    out = arr[:, ::-1] if op[1] else arr
    return np.ascontiguousarray(np.rot90(out, k=op[0], axes=(0, 1)))


@dataclass
class TrainingImages:
    """The training pairs of one defect type at the train resolution, in [-1, 1], shape (N, 3, R, R).

    ``part`` is ``whole * mask`` (0 = neutral grey outside the defect); ``background`` the image with its
    object blacked out (BCM only).
    """

    stems: list[str]
    whole: torch.Tensor
    part: torch.Tensor
    mask: torch.Tensor
    background: torch.Tensor | None


def _to_unit(arr: np.ndarray) -> np.ndarray:
    return arr.astype(np.float32) / 127.5 - 1.0


def load_training_images(
    samples: Sequence[DefectSample], resolution: int, object_masks: Sequence[Path] | None = None
) -> TrainingImages:
    """Read, resize (bicubic; masks nearest-neighbour) and pair the training images of one defect type."""
    wholes, parts, masks, backgrounds = [], [], [], []
    for index, sample in enumerate(samples):
        if sample.mask is None:
            raise DataError(f"{sample.image.path}: no mask", path=sample.image.path)
        try:
            image = load_rgb(sample.image.path).resize((resolution, resolution), Image.BICUBIC)
            mask_arr = load_mask(sample.mask.path)
        except OSError as exc:
            raise DataError(f"{sample.image.path}: unreadable ({exc})", path=sample.image.path) from exc
        mask_img = Image.fromarray(np.where(mask_arr, 255, 0).astype(np.uint8))
        mask = np.asarray(mask_img.resize((resolution, resolution), Image.NEAREST)) > 0
        whole = _to_unit(np.asarray(image))
        wholes.append(whole)
        parts.append(np.where(mask[..., None], whole, 0.0).astype(np.float32))
        masks.append(mask.astype(np.float32)[..., None])
        if object_masks is not None:
            obj = load_mask(object_masks[index])
            obj_img = Image.fromarray(np.where(obj, 255, 0).astype(np.uint8))
            obj = np.asarray(obj_img.resize((resolution, resolution), Image.NEAREST)) > 0
            # I_b: the object blacked out (-1 in [-1, 1]), as anogen.priors.background_image writes it.
            backgrounds.append(np.where(obj[..., None], -1.0, whole).astype(np.float32))

    def stack(arrays: list[np.ndarray]) -> torch.Tensor:
        return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()

    return TrainingImages(
        stems=[s.stem for s in samples],
        whole=stack(wholes),
        part=stack(parts),
        mask=stack(masks),
        background=stack(backgrounds) if backgrounds else None,
    )


@torch.no_grad()
def encode_latents(backbone: Backbone, images: torch.Tensor, batch: int = 4) -> torch.Tensor:
    """VAE latents (mean of the posterior, shifted and scaled as the UNet expects) of images in [-1, 1]."""
    vae = backbone.vae
    dtype = next(vae.parameters()).dtype
    device = next(vae.parameters()).device
    out = []
    for start in range(0, images.shape[0], batch):
        chunk = images[start : start + batch].to(device=device, dtype=dtype)
        mean = vae.encode(chunk).latent_dist.mean
        out.append(((mean.float() - backbone.shift_factor) * backbone.scaling_factor).cpu())
    return torch.cat(out)


@dataclass
class LatentCache:
    """Latents of every (training image, allowed flip): (N, V, C, h, w) each; ``background`` with BCM only."""

    whole: torch.Tensor
    part: torch.Tensor
    background: torch.Tensor | None
    variants: list[tuple[int, bool]]


def build_latent_cache(backbone: Backbone, images: TrainingImages, flips: Sequence[str]) -> LatentCache:
    """Encode each training image under each allowed flip once (the VAE is frozen, the images are few)."""
    variants = dihedral_variants(flips)

    def encode_all(stack: torch.Tensor) -> torch.Tensor:
        arr = stack.permute(0, 2, 3, 1).numpy()
        flipped = [_transform(img, op) for img in arr for op in variants]
        tensor = torch.from_numpy(np.stack(flipped)).permute(0, 3, 1, 2).contiguous()
        latents = encode_latents(backbone, tensor)
        return latents.reshape(arr.shape[0], len(variants), *latents.shape[1:])

    return LatentCache(
        whole=encode_all(images.whole),
        part=encode_all(images.part),
        background=encode_all(images.background) if images.background is not None else None,
        variants=variants,
    )


# ---------------------------------------------------------------------------------------------- one step


@dataclass
class StepBatch:
    """The random draws of one micro-batch (global: every data-parallel process draws the same)."""

    index: torch.Tensor  # (G,) training image of each pair
    variant: torch.Tensor  # (G,) flip of each pair
    timesteps: torch.Tensor  # (G,) one timestep per pair
    noise: torch.Tensor  # (G, 2, C, h, w) independent noise per branch
    background_noise: torch.Tensor | None  # (G, C, h, w)


def draw_batch(
    seed: int, category: str, defect: str, step: int, micro: int, size: int, cache: LatentCache, num_timesteps: int
) -> StepBatch:
    """Every random choice of one micro-batch, from a generator seeded by (seed, category, defect, step, micro)."""
    gen = torch.Generator().manual_seed(derive_seed(seed, category, defect, "step", step, micro))
    n, v = cache.whole.shape[:2]
    shape = cache.whole.shape[2:]
    index = torch.randint(n, (size,), generator=gen)
    variant = torch.randint(v, (size,), generator=gen)
    timesteps = torch.randint(0, num_timesteps, (size,), generator=gen)
    noise = torch.randn((size, 2, *shape), generator=gen)
    background_noise = torch.randn((size, *shape), generator=gen) if cache.background is not None else None
    return StepBatch(index, variant, timesteps, noise, background_noise)


def pair_loss(
    backbone: Backbone,
    adapter: DualAdapter,
    scheduler: Any,
    cache: LatentCache,
    batch: StepBatch,
    prompt_embeds: torch.Tensor,
    device: torch.device,
) -> torch.Tensor:
    """The dual loss of a batch of pairs: MSE of the prediction over both branches (a scalar).

    ``prompt_embeds`` is (2, L, D): row 0 the whole prompt, row 1 the part prompt.
    """
    from anogen.model.dual import dual_forward

    pairs = batch.index.shape[0]
    whole = cache.whole[batch.index, batch.variant]
    part = cache.part[batch.index, batch.variant]
    clean = torch.stack([whole, part], dim=1).flatten(0, 1).to(device)  # (2P, C, h, w): whole, part, ...
    noise = batch.noise.flatten(0, 1).to(device)
    timesteps = batch.timesteps.repeat_interleave(2).to(device)
    noisy = scheduler.add_noise(clean, noise, timesteps)
    background = None
    if cache.background is not None and batch.background_noise is not None:
        bg = cache.background[batch.index, batch.variant].to(device)
        background = scheduler.add_noise(bg, batch.background_noise.to(device), batch.timesteps.to(device))
    encoder_hidden_states = prompt_embeds.repeat(pairs, 1, 1)
    unet_dtype = next(backbone.unet.parameters()).dtype
    pred = dual_forward(
        backbone.unet,
        adapter,
        noisy.to(unet_dtype),
        timesteps,
        encoder_hidden_states.to(unet_dtype),
        background_latents=background.to(unet_dtype) if background is not None else None,
    )
    prediction_type = scheduler.config.get("prediction_type", "epsilon")
    if prediction_type == "epsilon":
        target = noise
    elif prediction_type == "v_prediction":
        target = scheduler.get_velocity(clean, noise, timesteps)
    else:
        raise BackboneError(f"the backbone's scheduler predicts {prediction_type!r}; anogen trains epsilon or v")
    return torch.nn.functional.mse_loss(pred.float(), target.float())


# ------------------------------------------------------------------------------------------ checkpoints


def _trainable_state(adapter: DualAdapter) -> dict[str, torch.Tensor]:
    return {f"param.{i:05d}": p.detach().cpu().contiguous() for i, p in enumerate(adapter.trainable_parameters())}


def _optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """AdamW state as safetensors-able tensors plus a JSON part (never pickled)."""
    state = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, Any] = {}
    for index, entries in state["state"].items():
        for name, value in entries.items():
            if torch.is_tensor(value):
                tensors[f"optim.{int(index):05d}.{name}"] = value.detach().cpu().contiguous()
            else:
                scalars[f"{int(index)}.{name}"] = value
    return tensors, {"param_groups": to_jsonable(state["param_groups"]), "scalars": scalars}


def save_checkpoint(
    folder: Path,
    step: int,
    adapter: DualAdapter,
    optimizer: torch.optim.Optimizer,
    resume_key: dict[str, Any],
    keep: int,
    scaler_state: dict[str, Any] | None = None,
    target_steps: int | None = None,
) -> Path:
    """Write ``checkpoints/step-NNNNNN/`` (``state.safetensors`` + ``state.json``) atomically, keep ``keep``.

    ``target_steps`` (the steps the run aims at) lets a later ``--resume`` continue to the same target.
    """
    from safetensors.torch import save

    root = folder / "checkpoints"
    final = root / f"step-{step:06d}"
    tmp = root / f".step-{step:06d}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    tensors = _trainable_state(adapter)
    opt_tensors, opt_json = _optimizer_tensors(optimizer)
    tensors.update(opt_tensors)
    data = save(tensors, metadata={"anogen_version": __version__, "step": str(step)})
    with open(tmp / "state.safetensors", "wb") as handle:
        handle.write(canonical_safetensors(data))
    state = {
        "schema_version": CHECKPOINT_SCHEMA_VERSION,
        "step": step,
        "resume_key": resume_key,
        "optimizer": opt_json,
        "scaler": scaler_state,
        "num_trainable_tensors": len(adapter.trainable_parameters()),
    }
    if target_steps is not None:
        state["target_steps"] = target_steps
    write_json_atomic(tmp / "state.json", state)
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    for old in _checkpoints(folder)[: -max(keep, 1)]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def load_checkpoint(checkpoint: Path, adapter: DualAdapter, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """Restore adapter weights and optimizer state from one of our checkpoints (safetensors + JSON only)."""
    from safetensors.torch import load_file

    state = _read_state(checkpoint)
    tensors = load_file(str(checkpoint / "state.safetensors"), device="cpu")
    params = adapter.trainable_parameters()
    if state.get("num_trainable_tensors") != len(params):
        raise CompatibilityError(f"{checkpoint}: it holds another number of trainable tensors than this adapter")
    with torch.no_grad():
        for i, param in enumerate(params):
            value = tensors[f"param.{i:05d}"]
            if value.shape != param.shape:
                raise CompatibilityError(f"{checkpoint}: tensor {i} has shape {tuple(value.shape)}, not {param.shape}")
            param.copy_(value.to(param.dtype))
    opt = state["optimizer"]
    entries: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, index, name = key.split(".", 2)
            entries.setdefault(int(index), {})[name] = value
    for key, value in opt["scalars"].items():
        index, name = key.split(".", 1)
        entries.setdefault(int(index), {})[name] = value
    optimizer.load_state_dict({"state": entries, "param_groups": opt["param_groups"]})
    return state


# ----------------------------------------------------------------------------------------------- validation


@torch.no_grad()
def validation_grid(
    backbone: Backbone,
    adapter: DualAdapter,
    config: ResolvedConfig,
    cache: LatentCache,
    device: torch.device,
    seed: int,
    pairs: int = VALIDATION_PAIRS,
    steps: int = VALIDATION_SAMPLER_STEPS,
) -> np.ndarray:
    """Sample a few (whole, part) pairs with DDIM and classifier-free guidance; uint8 grid, one pair per row.

    Cheap on purpose (``steps`` DDIM steps); the real sampler is ``anogen synth``. The same ``seed`` gives the
    same starting noise at every validation, so successive grids show what training changed.
    """
    from anogen.model.dual import dual_forward, encode_prompts

    scheduler = backbone.make_scheduler("ddim")
    scheduler.set_timesteps(steps)
    gen = torch.Generator().manual_seed(seed)
    shape = cache.whole.shape[2:]
    latents = torch.randn((2 * pairs, *shape), generator=gen).to(device) * scheduler.init_noise_sigma
    unet_dtype = next(backbone.unet.parameters()).dtype
    prompts = [config.adapter.prompt_whole, config.adapter.prompt_part]
    cond = encode_prompts(backbone, prompts, adapter).to(device)
    uncond = encode_prompts(backbone, [config.sample.negative_prompt] * 2, adapter).to(device)
    hidden = torch.cat([uncond.repeat(pairs, 1, 1), cond.repeat(pairs, 1, 1)]).to(unet_dtype)
    background_clean = None
    background_noise = None
    if cache.background is not None:
        index = torch.arange(pairs) % cache.background.shape[0]
        background_clean = cache.background[index, 0].to(device)
        background_noise = torch.randn(background_clean.shape, generator=gen).to(device)
    guidance = config.sample.guidance
    for t in scheduler.timesteps:
        model_in = scheduler.scale_model_input(torch.cat([latents, latents]), t)
        background = None
        if background_clean is not None:
            noised = scheduler.add_noise(background_clean, background_noise, t.reshape(1).to(device))
            background = torch.cat([noised, noised]).to(unet_dtype)
        pred = dual_forward(
            backbone.unet,
            adapter,
            model_in.to(unet_dtype),
            t.to(device),
            hidden,
            background_latents=background,
        ).float()
        pred_uncond, pred_cond = pred.chunk(2)
        guided = pred_uncond + guidance * (pred_cond - pred_uncond)
        latents = scheduler.step(guided, t, latents).prev_sample
    vae_dtype = next(backbone.vae.parameters()).dtype
    decoded = backbone.vae.decode((latents / backbone.scaling_factor + backbone.shift_factor).to(vae_dtype)).sample
    images = ((decoded.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    rows = [np.concatenate([images[2 * k], images[2 * k + 1]], axis=1) for k in range(pairs)]
    return np.concatenate(rows, axis=0)


# ---------------------------------------------------------------------------------------------- the loop


def _versions() -> dict[str, str]:
    import importlib.metadata as md

    versions = {"anogen": __version__}
    for name in ("torch", "diffusers", "transformers", "accelerate", "safetensors"):
        try:
            versions[name] = md.version(name)
        except md.PackageNotFoundError:
            versions[name] = "missing"
    return versions


def _make_accelerator(config: ResolvedConfig) -> Accelerator:
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    # One Python process may run several fits with different precisions (a notebook, the test suite); accelerate
    # keeps that choice in a process-wide state, which we reset. The distributed part (PartialState) is kept.
    AcceleratorState._reset_state(reset_partial_state=False)
    return Accelerator(
        mixed_precision=config.train.mixed_precision,
        gradient_accumulation_steps=config.train.gradient_accumulation,
    )


def _load_backbone(config: ResolvedConfig) -> Backbone:
    from anogen.model.backbone import load_backbone

    return load_backbone(
        config.backbone.id,
        cache_dir=config.backbone.cache_dir,
        revision=config.backbone.revision,
        seed=config.backbone.seed,
    )


def _adapter_record(
    category: Category,
    defect: str,
    config: ResolvedConfig,
    backbone: Backbone,
    split: Split,
    prior: Path | None,
    steps_done: int,
) -> dict[str, Any]:
    return {
        "anogen_version": __version__,
        "category": category.name,
        "defect": defect,
        "backbone": {"source": backbone.source, "content_hash": backbone.content_hash},
        "preset": config.preset,
        "config": config.to_dict(),
        "prompts": {"whole": config.adapter.prompt_whole, "part": config.adapter.prompt_part},
        "split": split.to_dict(),
        "seed": config.train.seed,
        "data": {
            "root": str(category.root),
            "format": category.dataset_format,
            "category": category.name,
            "image_size": list(category.image_size) if category.image_size else None,
            "grayscale": category.is_grayscale,
            "kind": category.kind.value if category.kind is not None else None,
        },
        "prior": str(prior) if prior is not None else None,
        "versions": _versions(),
        "steps_done": steps_done,
    }


def fit(
    category: Category,
    config: ResolvedConfig,
    out: str | Path,
    *,
    defects: Sequence[str] | None = None,
    prior_dir: str | Path | None = None,
    resume: bool = False,
    parallel: ParallelMode = "auto",
    progress: ProgressCallback | None = None,
    accelerator: Accelerator | None = None,
    backbone: Backbone | None = None,
    retarget: bool = False,
    on_plan: Callable[[FitPlan], None] | None = None,
) -> list[FitResult]:
    """Train one dual adapter per defect type of ``category`` into ``out/<category>/<defect>/``.

    Args:
        category (`Category`): as returned by ``anogen.data.read_category``.
        config (`ResolvedConfig`): from ``anogen.config.resolve``; ``train`` sets the loop, ``adapter`` the model.
        out (`str | Path`): the runs root.
        defects (`Sequence[str]`, *optional*): defect types to train; all by default.
        prior_dir (`str | Path`, *optional*): ``anogen prior`` output; required when ``config.adapter.bcm``.
        resume (`bool`, defaults to False): continue every adapter's recorded run from its latest checkpoint to
            its recorded target; finished adapters are left alone. Without it, a folder that already holds a fit
            is an error.
        parallel (`str`, defaults to `"auto"`): how several processes share the work (module docstring).
        progress (`ProgressCallback`, *optional*): ``fit <category>/<defect>`` events with ``loss`` and ``eta_s``.
        accelerator (`Accelerator`, *optional*): one to reuse; by default one is made from ``config.train``.
        backbone (`Backbone`, *optional*): an already loaded backbone (it is moved to the device and gets the dual
            processors during the fit; both are undone afterwards).
        retarget (`bool`, defaults to False): with ``resume``, train to ``config.train.steps`` even where a
            recorded run aimed at another number of steps (see :func:`plan_fit`).
        on_plan (`Callable`, *optional*): called with the :class:`FitPlan` once it is checked, before the backbone
            is loaded (the CLI announces changed targets with it).

    Returns:
        `list[FitResult]`: one per defect type, in plan order (every process returns the whole list).

    Raises:
        InputError: bad input, before any training (see :func:`plan_fit`).
    """
    accelerator = accelerator or _make_accelerator(config)
    device = accelerator.device
    world, rank = accelerator.num_processes, accelerator.process_index
    plan = plan_fit(
        category,
        config,
        out,
        defects=defects,
        prior_dir=prior_dir,
        resume=resume,
        parallel=parallel,
        num_processes=world,
        device=device.type,
        retarget=retarget,
    )
    if on_plan is not None:
        on_plan(plan)
    own_backbone = backbone is None
    backbone = backbone or _load_backbone(config)
    weight_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(config.train.mixed_precision, torch.float32)
    original_dtype = next(backbone.unet.parameters()).dtype
    original_device = next(backbone.unet.parameters()).device
    if original_dtype != weight_dtype or original_device != device:
        # Only when needed: a no-op .to() on a half-precision-aware diffusers model still warns.
        backbone.to(device=device, dtype=weight_dtype)
    if config.train.gradient_checkpointing:
        backbone.unet.enable_gradient_checkpointing()
    results: list[FitResult] = []
    try:
        for item in plan.defects:
            mine = plan.parallel == "data" or item.process == rank
            if item.complete:
                results.append(FitResult(category.name, item.defect, item.folder, item.steps, None, "complete"))
                continue
            if not mine:
                results.append(FitResult(category.name, item.defect, item.folder, 0, None, "other-process"))
                continue
            results.append(_fit_one(category, item, plan, config, backbone, accelerator, progress))
    finally:
        if config.train.gradient_checkpointing:
            backbone.unet.disable_gradient_checkpointing()
        if not own_backbone and (original_dtype != weight_dtype or original_device != device):
            backbone.to(device=original_device, dtype=original_dtype)
    if world > 1:
        accelerator.wait_for_everyone()
    return results


def _fit_one(
    category: Category,
    item: DefectPlan,
    plan: FitPlan,
    config: ResolvedConfig,
    backbone: Backbone,
    accelerator: Accelerator,
    progress: ProgressCallback | None,
) -> FitResult:
    from anogen.model.adapter import save_adapter
    from anogen.model.dual import DualAdapter, encode_prompts

    if item.steps and item.steps != config.train.steps:
        # A resume to the recorded target: the adapter record then states the steps actually trained to.
        config = dataclasses.replace(config, train=dataclasses.replace(config.train, steps=item.steps))
    train = config.train
    device = accelerator.device
    data_parallel = plan.parallel == "data" and accelerator.num_processes > 1
    world = accelerator.num_processes if data_parallel else 1
    rank = accelerator.process_index if data_parallel else 0
    writer = accelerator.is_main_process if data_parallel else True
    key = _resume_key(config, backbone.content_hash, item.split, world)

    object_masks = (
        _background_sources(category, item.defect, item.split.train, plan.prior)  # type: ignore[arg-type]
        if plan.bcm
        else None
    )
    images = load_training_images(item.split.train, train.resolution, object_masks)
    cache = build_latent_cache(backbone, images, train.flips)

    init_seed = derive_seed(train.seed, category.name, item.defect, "init")
    adapter = DualAdapter.from_backbone(backbone, config.adapter, seed=init_seed).to(device)
    params = adapter.trainable_parameters()
    optimizer = torch.optim.AdamW(params, lr=train.learning_rate)
    start = 0
    status = "trained"
    resumed: dict[str, Any] = {}
    if item.resume_from is not None:
        checkpoint = _checkpoints(item.folder)[-1]
        _check_resume(checkpoint, key, check_backbone_hash=True)
        resumed = load_checkpoint(checkpoint, adapter, optimizer)
        start = int(resumed["step"])
        status = "resumed"
        logger.info("%s/%s: resuming from %s", category.name, item.defect, checkpoint)
    optimizer = accelerator.prepare_optimizer(optimizer)
    if resumed.get("scaler") and accelerator.scaler is not None:
        accelerator.scaler.load_state_dict(resumed["scaler"])

    scheduler = backbone.make_scheduler()
    num_timesteps = int(scheduler.config.num_train_timesteps)
    scheduler.alphas_cumprod = scheduler.alphas_cumprod.to(device)
    prompts = [config.adapter.prompt_whole, config.adapter.prompt_part]
    fixed_embeds = None
    if not config.adapter.text_encoder_lora:
        with torch.no_grad():
            fixed_embeds = encode_prompts(backbone, prompts, adapter).to(device)

    log_path = item.folder / "train_log.jsonl"
    if writer:
        item.folder.mkdir(parents=True, exist_ok=True)
        _truncate_log(log_path, start)
    task = f"fit {category.name}/{item.defect}"
    batch_size = train.batch_size
    global_batch = batch_size * world
    adapter.install(backbone.unet)
    backbone.unet.train()
    began = time.monotonic()
    last_loss: float | None = None
    report(progress, task, start, train.steps)
    try:
        for step in range(start + 1, train.steps + 1):
            step_loss = torch.zeros((), device=device)
            for micro in range(train.gradient_accumulation):
                batch = draw_batch(
                    train.seed, category.name, item.defect, step, micro, global_batch, cache, num_timesteps
                )
                batch = _slice_batch(batch, rank * batch_size, (rank + 1) * batch_size)
                with accelerator.accumulate(adapter):
                    with accelerator.autocast():
                        embeds = (
                            fixed_embeds if fixed_embeds is not None else encode_prompts(backbone, prompts, adapter)
                        )
                        loss = pair_loss(backbone, adapter, scheduler, cache, batch, embeds, device)
                    accelerator.backward(loss)
                    if accelerator.sync_gradients and world > 1:
                        _all_reduce_grads(params, world)
                    if accelerator.sync_gradients and train.max_grad_norm is not None:
                        # after the all-reduce, so every process clips the same averaged gradient
                        accelerator.clip_grad_norm_(params, train.max_grad_norm)
                    optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
                step_loss += loss.detach() / train.gradient_accumulation
            if world > 1:
                step_loss = accelerator.reduce(step_loss, reduction="mean")
            last_loss = float(step_loss)
            if not math.isfinite(last_loss):
                raise DataError(
                    f"{task}: the loss became {last_loss} at step {step}",
                    hint="lower --lr, or use --mixed-precision bf16/no instead of fp16",
                )
            elapsed = time.monotonic() - began
            if writer:
                _append_log(
                    log_path, {"step": step, "loss": last_loss, "lr": train.learning_rate, "elapsed_s": elapsed}
                )
            if writer and train.checkpoint_every and step % train.checkpoint_every == 0:
                scaler_state = accelerator.scaler.state_dict() if accelerator.scaler is not None else None
                save_checkpoint(item.folder, step, adapter, optimizer, key, train.checkpoints_keep, scaler_state,
                                target_steps=train.steps)
            if writer and ((train.validate_every and step % train.validate_every == 0) or step == train.steps):
                _write_validation(
                    backbone, adapter, config, cache, device, category.name, item.defect, item.folder, step
                )
                backbone.unet.train()
            done = step - start
            eta = elapsed / done * (train.steps - step)
            report(progress, task, step, train.steps, loss=round(last_loss, 5), eta_s=round(eta, 1))
        if writer:
            if train.checkpoint_every and train.steps % train.checkpoint_every and train.steps > start:
                # A last checkpoint lets a later run with more --steps resume where this one ended.
                scaler_state = accelerator.scaler.state_dict() if accelerator.scaler is not None else None
                save_checkpoint(item.folder, train.steps, adapter, optimizer, key, train.checkpoints_keep, scaler_state,
                                target_steps=train.steps)
            record = _adapter_record(category, item.defect, config, backbone, item.split, plan.prior, train.steps)
            save_adapter(adapter, item.folder, record, dtype=train.save_dtype)
    finally:
        backbone.unet.eval()
        adapter.uninstall(backbone.unet)
    if data_parallel:
        accelerator.wait_for_everyone()
    return FitResult(category.name, item.defect, item.folder, train.steps, last_loss, status, adapter)


def _slice_batch(batch: StepBatch, lo: int, hi: int) -> StepBatch:
    return StepBatch(
        batch.index[lo:hi],
        batch.variant[lo:hi],
        batch.timesteps[lo:hi],
        batch.noise[lo:hi],
        batch.background_noise[lo:hi] if batch.background_noise is not None else None,
    )


def _all_reduce_grads(params: Sequence[torch.nn.Parameter], world: int) -> None:
    """Average gradients over the data-parallel processes (explicit, so no DDP wrapper touches the adapter)."""
    import torch.distributed as dist

    for param in params:
        if param.grad is None:
            param.grad = torch.zeros_like(param)
        dist.all_reduce(param.grad, op=dist.ReduceOp.SUM)
        param.grad.div_(world)


def _truncate_log(path: Path, last_step: int) -> None:
    """Keep the log rows up to ``last_step`` (a resumed run rewrites what came after its checkpoint)."""
    if not path.is_file():
        if last_step == 0:
            return
        write_text_atomic(path, "")
        return
    rows = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    kept = [line for line in rows if json.loads(line).get("step", 0) <= last_step]
    write_text_atomic(path, "".join(f"{line}\n" for line in kept))


def _append_log(path: Path, row: dict[str, Any]) -> None:
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(row, sort_keys=True) + "\n")


def _write_validation(
    backbone: Backbone,
    adapter: DualAdapter,
    config: ResolvedConfig,
    cache: LatentCache,
    device: torch.device,
    category: str,
    defect: str,
    folder: Path,
    step: int,
) -> None:
    backbone.unet.eval()
    seed = derive_seed(config.train.seed, category, defect, "validation")
    grid = validation_grid(backbone, adapter, config, cache, device, seed)
    save_png_atomic(folder / "validation" / f"step-{step:06d}.png", grid)


__all__ = [
    "FitPlan",
    "FitResult",
    "DefectPlan",
    "fit",
    "plan_fit",
    "estimate_peak_bytes",
    "dihedral_variants",
    "load_training_images",
]
