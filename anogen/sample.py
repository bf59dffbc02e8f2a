"""``anogen synth``: joint sampling of (whole, part) pairs with a fitted dual adapter, masks, manifests, resuming.

Attempt ids and seeds
    Every defect type has attempts ``0, 1, 2, ...``; attempt ``i`` uses seed
    ``derive_seed(sample.seed, category, defect, i)`` and draws its initial noise (whole then part, then one
    background noise per step with BCM) from its own CPU ``torch.Generator``; a stochastic sampler's per-step noise
    comes from one more generator per branch (:func:`step_noise_generator`). Its images therefore depend on neither
    the batch size nor the number of processes. The result of ``count = N`` is the first N *accepted* attempts in
    id order; rejected attempts keep their files and a reason.

Resuming
    Files are written atomically, a manifest row (appended and fsync'ed) only after its three PNGs exist. A rerun
    reads the rows, truncates a torn last line and generates only the ids that have no row; files without a row
    are regenerated (bit-identically) or, past the result, deleted at the end.

Several processes
    Under ``accelerate launch`` (or any launcher that sets ``RANK``/``WORLD_SIZE``/``MASTER_ADDR``/``MASTER_PORT``)
    rank ``r`` of ``W`` takes the ids with ``id % W == r`` and appends to ``manifest.rank<r>.jsonl``. Ranks read
    each other's shards (a shared file system) to learn when the first N accepted are settled; at the end rank 0
    merges the shards into ``manifest.jsonl``, sorted by id and cut after the N-th accepted attempt.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image

from anogen.config import MaskConfig, SampleConfig, resolve
from anogen.errors import CompatibilityError, InputError
from anogen.io import load_mask, load_rgb, safe_name, save_png_atomic, write_json_atomic
from anogen.manifest import (
    MANIFEST,
    SUBDIRS,
    append_row,
    cutoff_id,
    find_adapter_dirs,
    find_synth_dirs,
    make_row,
    read_all_rows,
    read_rows,
    read_run_json,
    result_rows,
    sample_name,
    shard_name,
    shard_paths,
    tally,
    write_manifest,
    write_run_json,
)
from anogen.masks import make_mask
from anogen.progress import ProgressCallback, report
from anogen.seeding import derive_seed
from anogen.verify.config import VerifyConfig
from anogen.verify.synth import (
    OutputRescorer,
    SampleVerifier,
    normal_model_for,
    resume_verify,
    verifier_for,
    verify_config_for,
)

if TYPE_CHECKING:
    from anogen.model.backbone import Backbone
    from anogen.model.dual import DualAdapter

logger = logging.getLogger(__name__)

# Sample settings that change the pixels of an attempt: a rerun into an existing output must keep them.
GENERATION_FIELDS = (
    "sampler", "steps", "guidance", "negative_prompt", "mixed_precision", "seed",
    "bcm_uncond_reference", "bcm_reference_every", "bcm_reference_pool",
)  # fmt: skip
REMASK_MARKER = ".remask-pending.json"
# Samplers that add fresh noise at every step (the rest are deterministic given the initial noise).
STOCHASTIC_SAMPLERS = frozenset({"ddpm", "sde-dpmsolver++"})


# ------------------------------------------------------------------------------------------------ sampling


def _prompts(record: Mapping[str, Any], adapter: DualAdapter) -> tuple[str, str]:
    """(whole, part) prompts: adapter.json's ``prompts`` if it records them, else the adapter config's."""
    prompts = record.get("prompts")
    if isinstance(prompts, Mapping) and "whole" in prompts and "part" in prompts:
        return str(prompts["whole"]), str(prompts["part"])
    if isinstance(prompts, (list, tuple)) and len(prompts) == 2:
        return str(prompts[0]), str(prompts[1])
    return adapter.config.prompt_whole, adapter.config.prompt_part


def _autocast(device: torch.device, mixed_precision: str) -> contextlib.AbstractContextManager[Any]:
    # Half precision only on a GPU: CPU autocast is slow and never required.
    if device.type != "cuda" or mixed_precision == "no":
        return contextlib.nullcontext()
    dtype = torch.float16 if mixed_precision == "fp16" else torch.bfloat16
    return torch.autocast("cuda", dtype=dtype)


@torch.no_grad()
def encode_backgrounds(backbone: Backbone, images: Sequence[np.ndarray], *, device: torch.device | str) -> torch.Tensor:
    """VAE latents (mean of the posterior, times the scaling factor) of uint8 (H, W, 3) background images.

    Images are resized (bilinear) to the backbone's resolution first.
    """
    size = backbone.resolution
    batch = []
    for img in images:
        pil = Image.fromarray(np.asarray(img, dtype=np.uint8)).convert("RGB")
        if pil.size != (size, size):
            pil = pil.resize((size, size), Image.BILINEAR)
        batch.append(torch.from_numpy(np.asarray(pil, dtype=np.float32) / 127.5 - 1.0).permute(2, 0, 1))
    x = torch.stack(batch).to(device=device, dtype=next(backbone.vae.parameters()).dtype)
    latents = backbone.vae.encode(x).latent_dist.mode()
    return ((latents - backbone.shift_factor) * backbone.scaling_factor).float()


@torch.no_grad()
def sample_pairs(
    backbone: Backbone,
    adapter: DualAdapter,
    record: Mapping[str, Any],
    seeds: Sequence[int],
    sample_config: SampleConfig,
    *,
    ids: Sequence[int] | None = None,
    background_latents: torch.Tensor | None = None,
    grey_latent: torch.Tensor | None = None,
    device: torch.device | str | None = None,
    output_type: str = "uint8",
) -> tuple[np.ndarray, np.ndarray]:
    """Denoise one batch of (whole, part) pairs jointly with the dual UNet and decode them.

    Args:
        backbone (`Backbone`): the frozen base model (on ``device``).
        adapter (`DualAdapter`): installed on ``backbone.unet`` for the call if it is not already.
        record (`Mapping`): the adapter's ``adapter.json`` (prompts).
        seeds (`Sequence[int]`): one seed per pair; pair k's initial noise (whole, part) and, with BCM, its
            per-step background noise come from ``torch.Generator("cpu").manual_seed(seeds[k])``; a stochastic
            sampler's per-step noise from :func:`step_noise_generator`.
        sample_config (`SampleConfig`): sampler, steps, guidance, negative prompt, mixed precision.
        ids (`Sequence[int]`, *optional*): attempt ids (default ``0..P-1``); pair k's BCM reference is background
            ``(ids[k] // sample_config.bcm_reference_every) % len(background_latents)``.
        background_latents (`torch.Tensor` of shape `(R, C, h, w)`, *optional*): clean latents of the reference
            backgrounds; required iff the adapter has BCM (see :func:`encode_backgrounds`).
        grey_latent (`torch.Tensor` of shape `(1, C, h, w)`, *optional*): the grey image's latent for
            ``sample_config.bcm_uncond_reference == "grey"`` (computed here when not given; see
            :func:`anogen.bcm_sampling.encode_grey`).
        device (*optional*): defaults to the UNet's device.
        output_type (`str`, defaults to `"uint8"`): ``"uint8"`` or ``"float"`` (values in [0, 1]).

    Returns:
        `(images, parts)`: each (P, H, W, 3), uint8 (or float32), H = W = ``backbone.resolution``.
    """
    from anogen.bcm_sampling import encode_grey, noised_references, reference_index
    from anogen.model.dual import dual_forward, encode_prompts

    pairs = len(seeds)
    ids = list(range(pairs)) if ids is None else list(ids)
    if len(ids) != pairs:
        raise ValueError(f"{len(ids)} ids for {pairs} seeds")
    device = torch.device(device) if device is not None else next(backbone.unet.parameters()).device
    bcm = bool(adapter.config.bcm)
    if bcm and (background_latents is None or len(background_latents) == 0):
        raise InputError("this adapter uses BCM: sampling needs background latents of real normal images")
    unet = backbone.unet
    installed_here = not adapter.is_installed(unet)
    if installed_here:
        adapter.to(device)
        adapter.install(unet)
    try:
        scheduler = backbone.make_scheduler(sample_config.sampler)
        scheduler.set_timesteps(sample_config.steps, device=device)
        channels = backbone.latent_channels
        side = backbone.resolution // backbone.vae_scale_factor
        generators = [torch.Generator("cpu").manual_seed(int(s)) for s in seeds]
        noise = torch.stack([torch.randn((2, channels, side, side), generator=g) for g in generators])
        latents = noise.reshape(2 * pairs, channels, side, side).to(device) * scheduler.init_noise_sigma

        whole, part = _prompts(record, adapter)
        neg = sample_config.negative_prompt
        guided = sample_config.guidance > 1.0  # as diffusers' pipeline: no unconditional pass at scale <= 1
        embeds = encode_prompts(backbone, [neg, neg, whole, part] if guided else [whole, part], adapter)
        if guided:
            states = torch.cat([embeds[0:2].repeat(pairs, 1, 1), embeds[2:4].repeat(pairs, 1, 1)])
        else:
            states = embeds.repeat(pairs, 1, 1)

        refs = None
        alphas = None
        grey = None
        if bcm:
            assert background_latents is not None
            bg = background_latents.to(device=device, dtype=torch.float32)
            every = sample_config.bcm_reference_every
            refs = bg[torch.tensor([reference_index(i, len(bg), every) for i in ids], device=device)]
            if guided and sample_config.bcm_uncond_reference == "grey":
                grey = grey_latent if grey_latent is not None else encode_grey(backbone, device=device)
                grey = grey.to(device=device, dtype=torch.float32)
            # The reference pass sees a background noised as in training (DDPM forward process), whatever sampler.
            alphas = backbone.make_scheduler(None).alphas_cumprod.to(device=device, dtype=torch.float32)

        step_kwargs: dict[str, Any] = {}
        if sample_config.sampler in STOCHASTIC_SAMPLERS:
            # One generator per row, seeded from its pair's seed and branch: a row's per-step noise depends on
            # nothing else, and each branch matches a stock pipeline given that generator.
            step_kwargs["generator"] = [step_noise_generator(int(s), branch) for s in seeds for branch in (0, 1)]
        with _autocast(device, sample_config.mixed_precision):
            for t in scheduler.timesteps:
                model_in = torch.cat([latents, latents]) if guided else latents
                model_in = scheduler.scale_model_input(model_in, t)
                background = None
                if refs is not None and alphas is not None:
                    step_noise = torch.stack([torch.randn(refs.shape[1:], generator=g) for g in generators]).to(device)
                    index = int(min(max(round(float(t)), 0), len(alphas) - 1))
                    background = noised_references(refs, step_noise, alphas[index], guided=guided, grey=grey)
                eps = dual_forward(unet, adapter, model_in, t, states, background_latents=background).float()
                if guided:
                    uncond, cond = eps.chunk(2)
                    eps = uncond + sample_config.guidance * (cond - uncond)
                latents = scheduler.step(eps, t, latents, return_dict=False, **step_kwargs)[0]
            decoded = _decode(backbone, latents)
    finally:
        if installed_here:
            adapter.uninstall(unet)
    images = decoded[0::2]
    parts = decoded[1::2]
    if output_type == "float":
        return images, parts
    return _to_uint8(images), _to_uint8(parts)


def step_noise_generator(seed: int, branch: int) -> torch.Generator:
    """The generator of a stochastic sampler's per-step noise for one branch (0 whole, 1 part) of the attempt
    with seed ``seed``; a stock ``StableDiffusionPipeline`` given it (and the branch's initial latent) draws the
    same noise."""
    return torch.Generator("cpu").manual_seed(derive_seed(seed, "step-noise", branch))


def _decode(backbone: Backbone, latents: torch.Tensor, chunk: int = 16) -> np.ndarray:
    """Batched VAE decoding to float32 (N, H, W, 3) in [0, 1], as diffusers' image processor does it."""
    vae = backbone.vae
    dtype = next(vae.parameters()).dtype
    out = []
    for start in range(0, latents.shape[0], chunk):
        z = latents[start : start + chunk] / backbone.scaling_factor + backbone.shift_factor
        x = vae.decode(z.to(dtype), return_dict=False)[0].float()
        out.append((x / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy())
    return np.concatenate(out)


def _to_uint8(x: np.ndarray) -> np.ndarray:
    return (x * 255).round().astype(np.uint8)


# ------------------------------------------------------------------------------------------- backgrounds


@dataclass
class References:
    """Real normal images of a category, cycled by attempt id: BCM backgrounds and object masks."""

    stems: list[str]
    backgrounds: list[np.ndarray]
    object_masks: list[np.ndarray | None]
    folder: Path | None
    every: int = 1  # a new reference every `every` attempts (SampleConfig.bcm_reference_every)

    def index(self, sample_id: int) -> int:
        """The reference attempt ``sample_id`` uses (its background and object mask)."""
        from anogen.bcm_sampling import reference_index

        return reference_index(sample_id, len(self.stems), self.every)

    def object_mask(self, sample_id: int) -> np.ndarray | None:
        if not self.object_masks:
            return None
        return self.object_masks[self.index(sample_id)]

    def scheduled(self, sample: SampleConfig) -> References:
        """These references cut to ``sample.bcm_reference_pool`` and changed every ``bcm_reference_every``."""
        from anogen.bcm_sampling import pool_size

        n = pool_size(len(self.stems), sample.bcm_reference_pool)
        return References(
            self.stems[:n],
            self.backgrounds[:n],
            self.object_masks[:n],
            self.folder,
            every=sample.bcm_reference_every,
        )


def load_references(record: Mapping[str, Any], *, need_backgrounds: bool, need_objects: bool) -> References:
    """The category's normal training images from the adapter's prior (adapter.json ``prior``), in the order
    :func:`anogen.priors.background_paths` gives (synth cycles them by attempt id): their backgrounds I_b for BCM
    and their object masks for ``on_object_only``.

    A texture category has neither: BCM is then an error, the object check is skipped (with a warning).
    """
    category = str(record.get("category", ""))
    prior = record.get("prior")
    if not (need_backgrounds or need_objects):
        return References([], [], [], None)
    what = "BCM backgrounds" if need_backgrounds else "object masks (--on-object-only)"
    if not prior:
        raise InputError(
            f"{what} come from the prior of category {category!r}, and its adapter.json records none",
            hint="run `anogen prior DATA`, fit with --prior, or drop --on-object-only",
        )
    from anogen.priors import background_paths, load_prior

    prior_record = load_prior(str(prior), category)
    paths = background_paths(str(prior), category)
    if not paths:
        if need_backgrounds:
            raise InputError(f"the prior in {prior_record.folder} has no backgrounds ({prior_record.kind} category)")
        logger.warning("%s: a %s category has no object masks; --on-object-only is skipped", category,
                       prior_record.kind)
        return References([], [], [], prior_record.folder)
    by_background = {prior_record.folder / r.background: r for r in prior_record.images if r.background}
    stems, backgrounds, objects = [], [], []
    for path in paths:
        row = by_background[path]
        stems.append(f"{row.split}/{row.stem}")
        if need_backgrounds:
            backgrounds.append(np.asarray(load_rgb(path)))
        if need_objects:
            objects.append(load_mask(prior_record.folder / row.object) if row.object else None)
    return References(stems, backgrounds, objects, prior_record.folder)


# ----------------------------------------------------------------------------------------------- planning


@dataclass
class Job:
    """One (category, defect) to synthesise: its adapter, output folder and effective configs."""

    adapter_dir: Path
    record: dict[str, Any]
    out_dir: Path
    category: str
    defect: str
    sample: SampleConfig
    mask: MaskConfig
    adapter_sha256: str
    # The folder keeps the result of the largest count it was ever run with: a rerun with a smaller --count
    # never deletes samples of an earlier, larger result (readers take the first ``count`` accepted rows).
    keep_count: int = 0
    verify: VerifyConfig = field(default_factory=VerifyConfig)

    @property
    def max_attempts(self) -> int:
        return self.sample.max_attempts if self.sample.max_attempts is not None else 4 * self.sample.count


@dataclass
class DefectSummary:
    """What one (category, defect) ended with."""

    category: str
    defect: str
    out_dir: str
    count: int
    accepted: int
    attempts: int
    rejected: dict[str, int]
    mean_mask_area: float | None
    generated: int
    elapsed_s: float
    exhausted: bool

    @property
    def samples_per_s(self) -> float:
        return self.generated / self.elapsed_s if self.elapsed_s > 0 else 0.0


@dataclass
class SynthSummary:
    """The result of :func:`synthesize`: one entry per defect type, plus totals."""

    defects: list[DefectSummary] = field(default_factory=list)
    elapsed_s: float = 0.0

    @property
    def exhausted(self) -> bool:
        return any(d.exhausted for d in self.defects)

    def to_dict(self) -> dict[str, Any]:
        rows = []
        for d in self.defects:
            row = dataclasses.asdict(d)
            row["samples_per_s"] = round(d.samples_per_s, 4)
            rows.append(row)
        return {
            "defects": rows,
            "accepted": sum(d.accepted for d in self.defects),
            "generated": sum(d.generated for d in self.defects),
            "elapsed_s": round(self.elapsed_s, 3),
            "exhausted": self.exhausted,
        }


def _configs_for(
    record: Mapping[str, Any],
    sample: SampleConfig | None,
    mask: MaskConfig | None,
    overrides: Mapping[str, Mapping[str, Any]] | None,
    recipe: str | None = None,
) -> tuple[SampleConfig, MaskConfig]:
    """Effective configs: the given ones, else the adapter's recorded ones (its fit preset, or that preset under
    ``recipe``); overrides win."""
    recorded = record.get("config") or {}
    base: dict[str, Any] = {}
    if sample is not None:
        base["sample"] = dataclasses.asdict(sample)
    elif recipe is not None:
        preset = record.get("preset") or recorded.get("preset")
        if not preset:
            raise InputError(
                f"--recipe {recipe}: adapter {record.get('category')}/{record.get('defect')} records no fit preset",
                hint="pass --preset with the preset it was fitted with",
            )
        base["sample"] = dataclasses.asdict(resolve(str(preset), recipe=recipe).sample)
    else:
        base["sample"] = dict(recorded.get("sample") or {})
    base["mask"] = dataclasses.asdict(mask) if mask is not None else dict(recorded.get("mask") or {})
    for section in ("sample", "mask"):
        base[section] = {k: v for k, v in base[section].items() if k in _field_names(section)}
        base[section].update({k: v for k, v in (overrides or {}).get(section, {}).items() if v is not None})
    resolved = resolve(overrides=base)
    return resolved.sample, resolved.mask


def _field_names(section: str) -> set[str]:
    cls = SampleConfig if section == "sample" else MaskConfig
    return {f.name for f in dataclasses.fields(cls)}


def _check_resume(job: Job, mask_explicit: bool) -> None:
    """Refuse to add to an output made with other generation settings; adopt its mask config if none was asked."""
    if (job.out_dir / REMASK_MARKER).exists():
        raise InputError(
            f"{job.out_dir}: an `anogen mask` run was interrupted here",
            hint=f"rerun `anogen mask {job.out_dir}` to finish it, then synth",
        )
    run = read_run_json(job.out_dir)
    job.keep_count = job.sample.count
    if run is None:
        return
    if isinstance(run.get("count"), int):
        job.keep_count = max(job.sample.count, run["count"], int(run.get("kept_count") or 0))
    old_sha = (run.get("adapter") or {}).get("sha256")
    if old_sha and old_sha != job.adapter_sha256:
        raise _stale_output_error(job, run.get("adapter") or {})
    old_sample = run.get("sample") or {}
    changed = [f for f in GENERATION_FIELDS if f in old_sample and old_sample[f] != getattr(job.sample, f)]
    if changed:
        detail = ", ".join(f"{f} {old_sample[f]!r} -> {getattr(job.sample, f)!r}" for f in changed)
        raise CompatibilityError(
            f"{job.out_dir}: existing samples were made with other settings ({detail})",
            hint="use the same settings to resume or top up, or write to a new --out folder",
        )
    old_mask = run.get("mask")
    if isinstance(old_mask, dict) and old_mask != dataclasses.asdict(job.mask):
        if mask_explicit:
            raise CompatibilityError(
                f"{job.out_dir}: existing masks were made with other mask settings",
                hint=f"re-threshold them first with `anogen mask {job.out_dir} ...`, then synth tops up",
            )
        # No mask setting asked for: keep the folder's own (e.g. after `anogen mask` re-thresholded it).
        job.mask = resolve(overrides={"mask": old_mask}).mask


def _stale_output_error(job: Job, made_with: Mapping[str, Any]) -> CompatibilityError:
    """An output made with an adapter that is not this one: usually the same folder, retrained since (``fit
    --resume --steps``); say so, and how to go on, rather than a bare hash mismatch."""
    old_sha = str(made_with.get("sha256"))
    way = f"write this adapter's samples to a new --out, or regenerate: delete {job.out_dir} and rerun"
    old_path = made_with.get("path")
    same_folder = old_path is not None and Path(old_path).resolve() == job.adapter_dir.resolve()
    if not same_folder:
        return CompatibilityError(
            f"{job.out_dir}: made with another adapter ({old_path or old_sha[:12]}), not {job.adapter_dir}",
            hint=way,
        )
    old_steps, new_steps = made_with.get("steps_done"), job.record.get("steps_done")
    steps = f" ({old_steps} steps; it now has {new_steps})" if old_steps is not None and new_steps is not None else ""
    return CompatibilityError(
        f"{job.out_dir} is stale: made from an earlier version of {job.adapter_dir}{steps}, retrained since",
        hint=way,
    )


def _check_sample_numbers(sample: SampleConfig) -> None:
    if sample.count < 1:
        # A count of 0 would exit 0 having done nothing, which a CI job would take for success.
        raise InputError(
            f"--count {sample.count} asks for no samples: nothing to do",
            hint="pass --count 1 or more (accepted samples per defect type)",
        )
    for name, flag in (("steps", "--steps"), ("batch_size", "--batch-size")):
        if getattr(sample, name) < 1:
            raise InputError(f"{flag} must be at least 1 (got {getattr(sample, name)})")
    if sample.max_attempts is not None and sample.max_attempts < 1:
        raise InputError(f"--max-attempts must be at least 1 (got {sample.max_attempts})")
    if sample.bcm_reference_every < 1:
        raise InputError(f"bcm_reference_every must be >= 1 (got {sample.bcm_reference_every})")


def prepare_jobs(
    runs: Path,
    out: Path,
    sample: SampleConfig | None = None,
    mask: MaskConfig | None = None,
    *,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
    recipe: str | None = None,
    verify: VerifyConfig | None = None,
) -> list[Job]:
    """Find the adapters below ``runs``, build each one's configs and check resuming is safe (no model load)."""
    from anogen.model.adapter import adapter_sha256, read_adapter_record

    jobs = []
    mask_explicit = mask is not None or any(v is not None for v in (overrides or {}).get("mask", {}).values())
    verify_explicit = verify is not None or any(v is not None for v in (overrides or {}).get("verify", {}).values())
    seen: dict[Path, Path] = {}
    for folder in find_adapter_dirs(runs):
        record = read_adapter_record(folder)
        category = str(record.get("category") or folder.parent.name)
        defect = str(record.get("defect") or folder.name)
        sample_cfg, mask_cfg = _configs_for(record, sample, mask, overrides, recipe)
        _check_sample_numbers(sample_cfg)
        out_dir = Path(out) / safe_name(category) / safe_name(defect)
        if out_dir in seen:
            raise InputError(f"adapters {seen[out_dir]} and {folder} both write to {out_dir}")
        seen[out_dir] = folder
        job = Job(folder, record, out_dir, category, defect, sample_cfg, mask_cfg, adapter_sha256(folder))
        job.verify = verify_config_for(record, verify, overrides)
        _check_resume(job, mask_explicit)
        resume_verify(job, read_run_json(job.out_dir), verify_explicit)
        jobs.append(job)
    return jobs


def _bytes_per_attempt(resolution: int) -> int:
    # Rough PNG sizes: RGB image ~1.5 B/px (natural texture), part image ~0.5 B/px (mostly flat grey), mask ~0.02.
    return int(resolution * resolution * 2.1) + 200


def _resolution_of(record: Mapping[str, Any]) -> int:
    """The output resolution without loading the model: the backbone's native size (``describe_backbone``), else
    the recorded training resolution."""
    from anogen.errors import BackboneError
    from anogen.model.spec import describe_backbone

    source = str((record.get("backbone") or {}).get("source") or "")
    try:
        native = describe_backbone(source).native_resolution if source else None
    except BackboneError:
        native = None
    if native is not None:
        return native
    train = ((record.get("config") or {}).get("train") or {}).get("resolution")
    return int(train or 512)


def plan(jobs: Sequence[Job]) -> list[dict[str, Any]]:
    """The dry-run plan: per defect type, what exists, what is left, and rough time and disk estimates.

    Time: from the samples/s a previous run in the same folder recorded, else a rough guess of
    ``steps x 4 UNet rows x (resolution / 512)^2 x 0.02 s`` (GPU) or ``x 1.5 s`` (CPU) per attempt.
    """
    gpu = torch.cuda.is_available()
    entries = []
    for job in jobs:
        rows = read_all_rows(job.out_dir) if job.out_dir.is_dir() else {}
        accepted = len(result_rows(rows, job.sample.count))
        done_attempts = len(rows)
        rate = (sum(1 for r in rows.values() if r.get("accepted")) / done_attempts) if done_attempts else 1.0
        missing = max(job.sample.count - accepted, 0)
        to_generate = min(math.ceil(missing / max(rate, 0.05)), max(job.max_attempts - done_attempts, 0))
        resolution = _resolution_of(job.record)
        run = read_run_json(job.out_dir) or {}
        measured = (run.get("last_run") or {}).get("samples_per_s")
        if measured:
            seconds = to_generate / float(measured)
            basis = "measured"
        else:
            per_row = (0.02 if gpu else 1.5) * (resolution / 512) ** 2
            seconds = to_generate * job.sample.steps * 4 * per_row
            basis = "rough guess"
        entries.append(
            {
                "category": job.category,
                "defect": job.defect,
                "adapter": str(job.adapter_dir),
                "out": str(job.out_dir),
                "resolution": resolution,
                "count": job.sample.count,
                "accepted": accepted,
                "attempts_done": done_attempts,
                "max_attempts": job.max_attempts,
                "to_generate": to_generate,
                "estimated_s": round(seconds, 1),
                "estimate_basis": basis,
                "estimated_disk_mb": round(to_generate * _bytes_per_attempt(resolution) / 1e6, 2),
                "sampler": job.sample.sampler,
                "steps": job.sample.steps,
                "guidance": job.sample.guidance,
                "bcm": bool((job.record.get("adapter_config") or {}).get("bcm")),
            }
        )
    return entries


# ------------------------------------------------------------------------------------------ distribution


@dataclass
class Dist:
    """This process's place among the processes sharing a run."""

    rank: int = 0
    world: int = 1
    barrier: Callable[[], None] = lambda: None
    device: torch.device | None = None


def current_dist() -> Dist:
    """Rank and world size from the launcher's environment (``accelerate launch``, ``torchrun``).

    With ``WORLD_SIZE > 1`` the process group is set up through :class:`accelerate.PartialState` (gloo on CPU),
    which needs ``MASTER_ADDR`` and ``MASTER_PORT`` as well; barriers go through it.
    """
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world <= 1:
        return Dist()
    from accelerate import PartialState

    state = PartialState(cpu=not torch.cuda.is_available())
    return Dist(rank=state.process_index, world=state.num_processes, barrier=state.wait_for_everyone,
                device=state.device)


# ------------------------------------------------------------------------------------------------- synth


def _load_backbone_for(record: Mapping[str, Any], cache: dict[tuple[str, str], Backbone], device: torch.device) -> Any:
    from anogen.model.backbone import load_backbone

    made_for = record.get("backbone") or {}
    source = str(made_for.get("source") or "")
    key = (source, str(made_for.get("content_hash")))
    if key not in cache:
        for other in cache.values():
            other.to("cpu")
        bb_cfg = (record.get("config") or {}).get("backbone") or {}
        cache.clear()
        cache[key] = load_backbone(
            source,
            cache_dir=bb_cfg.get("cache_dir"),
            revision=bb_cfg.get("revision"),
            seed=int(bb_cfg.get("seed", 0) or 0),
            device=str(device),
        )
    return cache[key]


def _run_json(job: Job, refs: References, dist: Dist) -> dict[str, Any]:
    from anogen import __version__

    return {
        "anogen_version": __version__,
        "adapter": {
            "path": str(job.adapter_dir),
            "sha256": job.adapter_sha256,
            "steps_done": job.record.get("steps_done"),
        },
        "category": job.category,
        "defect": job.defect,
        "backbone": job.record.get("backbone"),
        "data": job.record.get("data"),
        "prior": job.record.get("prior"),
        "prompts": job.record.get("prompts"),
        "sample": dataclasses.asdict(job.sample),
        "mask": dataclasses.asdict(job.mask),
        "verify": job.verify.to_dict(),
        "seed": job.sample.seed,
        "count": job.sample.count,
        "kept_count": job.keep_count,
        "max_attempts": job.max_attempts,
        "references": refs.stems,
        "world_size": dist.world,
    }


def _cleanup(folder: Path, keep_ids: set[int]) -> None:
    """Delete temp files of killed writes and PNGs of attempts outside the manifest (never part of the result)."""
    for sub in SUBDIRS:
        d = folder / sub
        if not d.is_dir():
            continue
        for path in d.iterdir():
            if path.name.startswith(".") and path.name.endswith(".tmp"):
                path.unlink(missing_ok=True)
            elif path.suffix == ".png" and path.stem.isdigit() and int(path.stem) not in keep_ids:
                path.unlink(missing_ok=True)


def finalize(folder: Path, count: int) -> dict[int, dict[str, Any]]:
    """Merge every row into ``manifest.jsonl`` (sorted by id, cut after the ``count``-th accepted attempt), delete
    shards, temp files and files of attempts past the cut. Deterministic: the same rows give the same bytes."""
    rows = read_all_rows(folder)
    cut = cutoff_id(rows, count)
    kept = {i: r for i, r in rows.items() if cut is None or i <= cut}
    write_manifest(folder, kept.values())
    for shard in shard_paths(folder):
        shard.unlink(missing_ok=True)
    _cleanup(folder, set(kept))
    return kept


def _summarise(job: Job, rows: Mapping[int, Mapping[str, Any]], generated: int, elapsed: float) -> DefectSummary:
    counts = tally(rows, job.sample.count)
    result = result_rows(rows, job.sample.count)
    areas = [float(r["mask_area"]) for r in result]
    return DefectSummary(
        category=job.category,
        defect=job.defect,
        out_dir=str(job.out_dir),
        count=job.sample.count,
        accepted=counts.accepted,
        attempts=counts.attempts,
        rejected=counts.rejected,
        mean_mask_area=round(float(np.mean(areas)), 6) if areas else None,
        generated=generated,
        elapsed_s=round(elapsed, 3),
        exhausted=counts.accepted < job.sample.count,
    )


def _report_counts(
    progress: ProgressCallback | None, job: Job, rows: Mapping[int, Mapping[str, Any]], **info: Any
) -> tuple[int, int]:
    """Report accepted / count and rejected as :func:`tally` counts them; returns (accepted, rejected)."""
    counts = tally(rows, job.sample.count)
    report(progress, f"synth {job.category}/{job.defect}", counts.accepted, job.sample.count,
           rejected=counts.rejected_total, **info)
    return counts.accepted, counts.rejected_total


def _write_attempt(
    job: Job, sample_id: int, seed: int, image: np.ndarray, part: np.ndarray, refs: References, log_path: Path,
    verifier: SampleVerifier | None = None,
) -> dict[str, Any]:
    result = make_mask(part, job.mask, size=image.shape[:2], object_mask=refs.object_mask(sample_id))
    accepted, reason = result.accepted, result.reason
    name = sample_name(sample_id)
    save_png_atomic(job.out_dir / "image" / f"{name}.png", image)
    save_png_atomic(job.out_dir / "part" / f"{name}.png", part)
    save_png_atomic(job.out_dir / "mask" / f"{name}.png", result.mask)
    extra: dict[str, Any] = {}
    if refs.stems:
        extra["reference"] = refs.stems[refs.index(sample_id)]
    if verifier is not None and result.accepted and result.mask.any():  # docs/verify.md: only what masks accept
        extra["verify"], reason = verifier.check(image, result.mask)
        accepted = reason is None
    row = make_row(
        sample_id,
        seed=seed,
        category=job.category,
        defect=job.defect,
        accepted=accepted,
        reason=reason,
        mask_area=result.area,
        adapter_sha256=job.adapter_sha256,
        **extra,
    )
    append_row(log_path, row)  # only now: the three files exist
    return row


def _first_missing(rows: Mapping[int, Any]) -> int:
    i = 0
    while i in rows:
        i += 1
    return i


def _wait_for_slower_ranks(
    folder: Path,
    rows: dict[int, dict[str, Any]],
    todo: list[int],
    pending: Callable[[], list[int]],
    lookahead: int,
) -> list[int]:
    """Hold a rank that runs more than ``lookahead`` ids ahead of the first id nobody has finished yet.

    Without it a fast rank would generate up to ``max_attempts`` before a slow one settles the first N accepted.
    No deadlock: the rank owning the first missing id is never held (its next id is that id).
    """
    while todo and todo[0] > _first_missing(rows) + lookahead:
        time.sleep(0.1)
        rows.update(read_all_rows(folder))
        todo = pending()
    return todo


def _synth_job(
    job: Job,
    backbone_cache: dict[tuple[str, str], Backbone],
    dist: Dist,
    device: torch.device,
    progress: ProgressCallback | None,
) -> tuple[int, float, tuple[int, int] | None]:
    """Generate this rank's share of one job; returns (attempts generated, seconds, last (accepted, rejected)
    reported to ``progress``, or ``None``)."""
    from anogen.model.adapter import load_adapter

    start = time.monotonic()
    folder = job.out_dir
    log_path = folder / (MANIFEST if dist.world == 1 else shard_name(dist.rank))
    read_rows(log_path, repair=True)  # only this process appends to log_path
    rows = read_all_rows(folder)

    def pending() -> list[int]:
        cut = cutoff_id(rows, job.sample.count)
        limit = job.max_attempts if cut is None else min(job.max_attempts, cut + 1)
        return [i for i in range(dist.rank, limit, dist.world) if i not in rows]

    bcm = bool(job.record.get("has_bcm", (job.record.get("adapter_config") or {}).get("bcm", False)))
    refs = load_references(job.record, need_backgrounds=bcm, need_objects=job.mask.on_object_only)
    if bcm:
        refs = refs.scheduled(job.sample)
    folder.mkdir(parents=True, exist_ok=True)
    if dist.rank == 0:
        run = _run_json(job, refs, dist)
        old = read_run_json(folder) or {}
        if "last_run" in old:
            run["last_run"] = old["last_run"]
        write_run_json(folder, run)
    todo = pending()
    if not todo:
        return 0, time.monotonic() - start, None
    backbone = _load_backbone_for(job.record, backbone_cache, device)
    adapter, _ = load_adapter(job.adapter_dir, backbone, device=device)
    background_latents = grey_latent = None
    if adapter.config.bcm:
        background_latents = encode_backgrounds(backbone, refs.backgrounds, device=device)
        if job.sample.bcm_uncond_reference == "grey" and job.sample.guidance > 1.0:
            from anogen.bcm_sampling import encode_grey

            grey_latent = encode_grey(backbone, device=device)
    verifier = verifier_for(job, backbone)
    for sub in SUBDIRS:
        (folder / sub).mkdir(parents=True, exist_ok=True)
    generated = 0
    shown: tuple[int, int] | None = None
    adapter.install(backbone.unet)
    try:
        while todo:
            if dist.world > 1:
                todo = _wait_for_slower_ranks(folder, rows, todo, pending, dist.world * job.sample.batch_size * 2)
                if not todo:
                    break
            batch = todo[: job.sample.batch_size]
            seeds = [derive_seed(job.sample.seed, job.category, job.defect, i) for i in batch]
            images, parts = sample_pairs(
                backbone, adapter, job.record, seeds, job.sample,
                ids=batch, background_latents=background_latents, grey_latent=grey_latent, device=device,
            )
            for k, sample_id in enumerate(batch):
                rows[sample_id] = _write_attempt(job, sample_id, seeds[k], images[k], parts[k], refs, log_path,
                                                 verifier)
            generated += len(batch)
            if dist.world > 1:
                rows.update({i: r for i, r in read_all_rows(folder).items() if i not in rows})
            elapsed = time.monotonic() - start
            # Counted as the merged manifest will hold them: attempts of this batch past the count-th accepted
            # one are deleted by finalize, so they are not counted as rejected here either.
            shown = _report_counts(progress, job, rows, samples_s=f"{generated / elapsed:.2f}" if elapsed > 0 else "-")
            todo = pending()
    finally:
        adapter.uninstall(backbone.unet)
    return generated, time.monotonic() - start, shown


def synthesize(
    runs: Path,
    out: Path,
    sample: SampleConfig | None = None,
    mask: MaskConfig | None = None,
    *,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
    recipe: str | None = None,
    progress: ProgressCallback | None = None,
    device: str | torch.device | None = None,
    dist: Dist | None = None,
    verify: VerifyConfig | None = None,
) -> SynthSummary:
    """Generate ``count`` accepted (image, part, mask) triples per defect type below ``runs``.

    Args:
        runs (`Path`): a fit output root, a category folder or one defect's folder (every ``adapter.json`` below).
        out (`Path`): output root; writes ``out/<category>/<defect>/``.
        sample (`SampleConfig`, *optional*): sampling settings; ``None`` takes each adapter's recorded ones.
        mask (`MaskConfig`, *optional*): mask settings; ``None`` takes each adapter's recorded ones (or, when
            resuming, the output folder's own, e.g. after ``anogen mask``).
        overrides (`Mapping`, *optional*): ``{"sample": {...}, "mask": {...}, "verify": {...}}`` applied on top
            (CLI flags); ``None`` values are ignored.
        recipe (`str`, *optional*): ``reference`` or ``fast``: with ``sample`` ``None``, each adapter's sample
            settings come from its fit preset under this recipe instead of its recorded ones.
        progress (`ProgressCallback`, *optional*): receives accepted / count with rejected and samples/s.
        device (*optional*): defaults to the launcher's device, else CUDA when available, else CPU.
        dist (`Dist`, *optional*): defaults to :func:`current_dist` (environment of the launcher).
        verify (`VerifyConfig`, *optional*): verification settings; ``None`` takes each adapter's recorded ones.

    Returns:
        SynthSummary: per defect type: accepted, rejected by reason, mean mask area, time, throughput;
        ``exhausted`` when ``max_attempts`` ran out before ``count`` accepted (results are kept).

    Raises:
        CompatibilityError: an existing output made with another adapter or other generation settings, or an
            adapter made for another backbone; raised before anything is generated.
    """
    start = time.monotonic()
    jobs = prepare_jobs(Path(runs), Path(out), sample, mask, overrides=overrides, recipe=recipe, verify=verify)
    dist = dist or current_dist()
    if device is None:
        device = dist.device or ("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    check_backbones(jobs)
    summary = SynthSummary()
    cache: dict[tuple[str, str], Backbone] = {}
    # Every adapter against its loaded backbone first, so that a wrong one stops the run before anything is made.
    for job in jobs:
        backbone = _load_backbone_for(job.record, cache, device)
        made_for = job.record.get("backbone") or {}
        if backbone.content_hash != made_for.get("content_hash"):
            raise CompatibilityError(
                f"{job.adapter_dir / 'adapter.json'}: adapter made for backbone {made_for.get('source')!r} "
                f"({str(made_for.get('content_hash'))[:12]}), but that backbone now loads as "
                f"{backbone.content_hash[:12]}",
                hint="refit the adapter on this backbone, or restore the backbone it was made with",
            )
        if job.verify.mode != "off" and dist.rank == 0:
            normal_model_for(job.record, job.out_dir.parent, backbone, job.verify)  # built once, before the ranks
    dist.barrier()
    for job in jobs:
        generated, elapsed, shown = _synth_job(job, cache, dist, device, progress)
        dist.barrier()
        if dist.rank == 0:
            rows = finalize(job.out_dir, max(job.keep_count, job.sample.count))
            counts = tally(rows, job.sample.count)
            if shown != (counts.accepted, counts.rejected_total):
                # The merged manifest is the truth: other processes' rows, or nothing generated by this run.
                _report_counts(progress, job, rows)
            run = read_run_json(job.out_dir)
            if run is not None and generated:
                run["last_run"] = {"samples_per_s": round(generated / elapsed, 4) if elapsed > 0 else None}
                write_run_json(job.out_dir, run)
        dist.barrier()
        rows = read_all_rows(job.out_dir)
        summary.defects.append(_summarise(job, rows, generated, elapsed))
    summary.elapsed_s = time.monotonic() - start
    return summary


def check_backbones(jobs: Sequence[Job]) -> None:
    """Every adapter must name a backbone with a content hash, and that backbone must be findable: the checks a
    real run makes before loading weights, shared with ``synth --dry-run`` (``describe_backbone``, as
    ``load_backbone`` starts with). The hash itself is checked against the loaded weights later."""
    from anogen.model.spec import describe_backbone

    for job in jobs:
        made_for = job.record.get("backbone") or {}
        if not made_for.get("source") or not made_for.get("content_hash"):
            raise CompatibilityError(
                f"{job.adapter_dir / 'adapter.json'}: records no backbone (source and content_hash)",
                hint="refit it with this version of anogen",
            )
        bb_cfg = (job.record.get("config") or {}).get("backbone") or {}
        describe_backbone(str(made_for["source"]), cache_dir=bb_cfg.get("cache_dir"), revision=bb_cfg.get("revision"))


# ------------------------------------------------------------------------------------------------ remask


@dataclass
class RemaskSummary:
    """Per synth folder: accepted before and after re-thresholding, and the count it was made for."""

    folders: list[dict[str, Any]] = field(default_factory=list)


def remask(
    synth_dir: Path,
    mask: MaskConfig | None = None,
    *,
    overrides: Mapping[str, Any] | None = None,
    progress: ProgressCallback | None = None,
) -> RemaskSummary:
    """Re-threshold every part image below ``synth_dir`` into a new mask, without regenerating anything.

    Masks are rewritten one by one (each atomically), then ``manifest.jsonl`` and ``run.json`` (atomically). A
    marker file guards the window in between: synth refuses a folder whose re-thresholding was interrupted, and
    rerunning ``anogen mask`` finishes it. If fewer than ``count`` rows are accepted afterwards, rerunning the
    same ``anogen synth`` command tops the folder up.

    Args:
        synth_dir (`Path`): a synth output root, category folder or defect folder.
        mask (`MaskConfig`, *optional*): the new settings; ``None`` starts from each folder's recorded ones.
        overrides (`Mapping`, *optional*): mask fields to change (``None`` values ignored), e.g. ``{"threshold":
            "otsu"}``.
    """
    summary = RemaskSummary()
    for folder in find_synth_dirs(synth_dir):
        if shard_paths(folder):
            raise InputError(
                f"{folder}: holds manifest shards of an unfinished synth run",
                hint="rerun the synth command to finish it first",
            )
        run = read_run_json(folder) or {}
        base = dataclasses.asdict(mask) if mask is not None else dict(run.get("mask") or {})
        base.update({k: v for k, v in (overrides or {}).items() if v is not None})
        cfg = resolve(overrides={"mask": base}).mask
        rows = read_rows(folder / MANIFEST)
        refs = References([], [], [], None)
        if cfg.on_object_only:
            refs = load_references(run, need_backgrounds=False, need_objects=True)
            if any("reference" in row for row in rows):
                # a BCM run: each attempt's object mask is that of the background it was sampled with
                known = _field_names("sample")
                recorded = {k: v for k, v in (run.get("sample") or {}).items() if k in known}
                refs = refs.scheduled(resolve(overrides={"sample": recorded}).sample)
        marker = folder / REMASK_MARKER
        write_json_atomic(marker, {"mask": dataclasses.asdict(cfg)})
        before = len(result_rows(rows, run.get("count")))
        rescorer = OutputRescorer(folder, run)
        new_rows = []
        missing = [row["part"] for row in rows if not (folder / row["part"]).is_file()]
        if missing:
            raise InputError(f"{folder}: {len(missing)} part image(s) of the manifest are missing, e.g. {missing[0]}",
                             hint="rerun the synth command to regenerate them")
        for k, row in enumerate(rows):
            part = np.asarray(load_rgb(folder / row["part"]))
            with Image.open(folder / row["image"]) as img:
                size = (img.height, img.width)
            obj = refs.object_mask(int(row["id"])) if refs.object_masks else None
            result = make_mask(part, cfg, size=size, object_mask=obj)
            changed = not (folder / row["mask"]).is_file() or not np.array_equal(
                load_mask(folder / row["mask"]) > 0, result.mask > 0)
            accepted, reason, scores = rescorer.verdict(row, result.mask, changed, result.accepted, result.reason)
            save_png_atomic(folder / row["mask"], result.mask)
            new_row = {k: v for k, v in row.items() if k != "verify"}  # scores of the old mask must not stay
            new_rows.append({**new_row, "accepted": accepted, "reason": reason, "mask_area": round(result.area, 6),
                             **({"verify": scores} if scores is not None else {})})
            report(progress, f"mask {folder.parent.name}/{folder.name}", k + 1, len(rows))
        write_manifest(folder, new_rows)
        run["mask"] = dataclasses.asdict(cfg)
        run.pop("schema_version", None)
        write_run_json(folder, run)
        marker.unlink()
        after = len(result_rows(new_rows, run.get("count")))
        summary.folders.append(
            {"folder": str(folder), "count": run.get("count"), "accepted_before": before, "accepted_after": after,
             "attempts": len(rows), "needs_top_up": run.get("count") is not None and after < int(run["count"])}
        )
    return summary


__all__ = [
    "DefectSummary",
    "Job",
    "RemaskSummary",
    "SynthSummary",
    "encode_backgrounds",
    "finalize",
    "plan",
    "prepare_jobs",
    "remask",
    "sample_pairs",
    "synthesize",
]
