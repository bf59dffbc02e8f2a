"""One training step: the seeded random draws of a micro-batch and the dual (whole, part) loss on them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from anogen.errors import BackboneError
from anogen.fit.data import LatentCache
from anogen.seeding import derive_seed

if TYPE_CHECKING:
    from anogen.model.backbone import Backbone
    from anogen.model.dual import DualAdapter


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


def _slice_batch(batch: StepBatch, lo: int, hi: int) -> StepBatch:
    return StepBatch(
        batch.index[lo:hi],
        batch.variant[lo:hi],
        batch.timesteps[lo:hi],
        batch.noise[lo:hi],
        batch.background_noise[lo:hi] if batch.background_noise is not None else None,
    )
