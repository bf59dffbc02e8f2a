"""Validation grids during a fit: a few cheap DDIM (whole, part) samples from the same noise at every
validation, written to ``validation/step-NNNNNN.png``."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from anogen.config import ResolvedConfig
from anogen.fit.data import LatentCache
from anogen.io import save_png_atomic
from anogen.seeding import derive_seed

if TYPE_CHECKING:
    from anogen.model.backbone import Backbone
    from anogen.model.dual import DualAdapter

VALIDATION_PAIRS = 2
VALIDATION_SAMPLER_STEPS = 12


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


def write_validation(
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
    """Write the validation grid of ``step`` into ``folder/validation/`` (the UNet is left in eval mode)."""
    backbone.unet.eval()
    seed = derive_seed(config.train.seed, category, defect, "validation")
    grid = validation_grid(backbone, adapter, config, cache, device, seed)
    save_png_atomic(folder / "validation" / f"step-{step:06d}.png", grid)
