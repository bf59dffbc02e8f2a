"""Sampling: one batch of (whole, part) pairs denoised jointly by the dual UNet, its per-step noise, decoding.

Also the VAE encoding of BCM backgrounds the loop is given. Torch at the top: everything here is tensors.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image

from anogen.config import SampleConfig
from anogen.errors import InputError
from anogen.seeding import derive_seed
from anogen.synth.bcm import encode_grey, noised_references, reference_index

if TYPE_CHECKING:
    from anogen.model.backbone import Backbone
    from anogen.model.dual import DualAdapter
    from anogen.records import AdapterRecord

# Samplers that add fresh noise at every step (the rest are deterministic given the initial noise).
STOCHASTIC_SAMPLERS = frozenset({"ddpm", "sde-dpmsolver++"})


# ------------------------------------------------------------------------------------------------ sampling


def _prompts(record: AdapterRecord, adapter: DualAdapter) -> tuple[str, str]:
    """(whole, part) prompts: adapter.json's ``prompts`` if it records them, else the adapter config's."""
    prompts = record.prompts
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
    record: AdapterRecord,
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
        record (`AdapterRecord`): the adapter's ``adapter.json`` (prompts).
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
            :func:`anogen.synth.bcm.encode_grey`).
        device (*optional*): defaults to the UNet's device.
        output_type (`str`, defaults to `"uint8"`): ``"uint8"`` or ``"float"`` (values in [0, 1]).

    Returns:
        `(images, parts)`: each (P, H, W, 3), uint8 (or float32), H = W = ``backbone.resolution``.
    """
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
