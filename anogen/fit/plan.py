"""What a fit will do, checked before any model is loaded: :func:`plan_fit` and every input check.

:func:`plan_fit` stops every problem a user can fix; ``anogen fit --dry-run`` prints the :class:`FitPlan` it returns.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from anogen.config import ResolvedConfig
from anogen.data.model import Category, CategoryKind, DefectSample
from anogen.data.split import Split, few_shot_split
from anogen.dist import launcher_world_size
from anogen.errors import DataError, InputError
from anogen.fit.estimate import _count_parameters, estimate_fit_seconds, measured_s_per_step
from anogen.fit.results import DefectPlan, FitPlan
from anogen.fit.resume import _existing_state, _resume_key
from anogen.io import safe_name
from anogen.model.spec import describe_backbone

ParallelMode = Literal["auto", "defects", "data"]


# --------------------------------------------------------------------------------------------- planning


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
    # Ranges are checked by the config classes themselves (anogen/config/sections.py); what is left is fit's own
    # policy (a LoRA to train) and what depends on the device this fit runs on.
    if config.adapter.rank < 1:
        raise InputError(f"adapter.rank must be at least 1 (got {config.adapter.rank})")
    if config.train.mixed_precision == "fp16" and not device.startswith("cuda"):
        raise InputError(
            f"--mixed-precision fp16 needs a CUDA GPU (this run is on {device})",
            hint="use --mixed-precision bf16 or no on the CPU",
        )


def _default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


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
            (``anogen.priors.auto``; a dry run builds nothing): its files are not checked, and the plan (parameter
            count, memory and time) is still the BCM fit's.

    Returns:
        `FitPlan`.

    Raises:
        InputError: (and subclasses) for every bad input above, one line each.
    """
    device = device or _default_device()
    world = num_processes if num_processes is not None else launcher_world_size()
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
    described = describe_backbone(config.backbone)
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
    from anogen.priors import load_prior, split_of

    record = load_prior(prior, category.name)
    if not record.is_object:
        raise InputError(
            f"the prior in {record.folder} marks {category.name!r} as a texture: it has no backgrounds for BCM",
            hint="pass --bcm off",
        )
    paths = []
    for sample in samples:
        split = split_of(category, sample.image, f"test/{safe_name(defect)}")
        row = record.find(split, sample.stem)
        if row is None or row.object is None or not (record.folder / row.object).is_file():
            raise DataError(
                f"the prior in {record.folder} has no object mask for {sample.image.path}",
                hint=f"rerun `anogen prior` on this data into {prior}",
            )
        paths.append(record.folder / row.object)
    return paths
