"""The training phases of the toy backbone's recipe: autoencoder, decoder fine-tune and UNet (with EMA)."""

from __future__ import annotations

import copy
import json
import logging
import math
import time
from typing import Any

import numpy as np

from anogen.seeding import derive_seed
from anogen.toy.images import to_tensor

# Every phase logs under the recipe's name, whichever module it lives in.
logger = logging.getLogger("anogen.toy.pretrain")

DOMAIN_WEIGHTS = {"object": 0.28, "texture": 0.28, "part": 0.28, "object_marked": 0.08, "texture_marked": 0.08}


def _set_cosine_lr(opt: Any, lr: float, step: int, steps: int) -> None:
    """Cosine decay from ``lr`` to 10 % of it: the last steps must not undo fine detail."""
    for group in opt.param_groups:
        group["lr"] = lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * step / steps)))


def _draw_crops(gen: np.random.Generator, images: np.ndarray, marks: np.ndarray, batch: int, crop: int) -> np.ndarray:
    """One autoencoder batch: half toy images, half generic marks, as ``crop`` x ``crop`` crops aligned to the
    4-pixel latent grid (uint8, (batch, crop, crop, 3))."""
    half = batch // 2
    pool = np.concatenate([images[gen.integers(0, len(images), batch - half)],
                           marks[gen.integers(0, len(marks), half)]])
    size = pool.shape[1]
    offsets = gen.integers(0, (size - crop) // 4 + 1, (batch, 2)) * 4
    return np.stack([im[y:y + crop, x0:x0 + crop] for im, (y, x0) in zip(pool, offsets, strict=True)])


def train_vae(
    vae: Any,
    images: np.ndarray,
    marks: np.ndarray,
    *,
    steps: int,
    batch: int,
    lr: float,
    seed: int,
    max_seconds: float,
    crop: int = 32,
) -> dict[str, Any]:
    """Train the autoencoder (L1 + MSE + 1e-6 KL) on random crops; returns figures.

    Half of every batch comes from ``marks`` (generic marks of any colour): saturated, near-white and near-black
    details are rare in the toy normals, and an autoencoder that never saw them erases them. The network is
    convolutional, so ``crop`` x ``crop`` crops (aligned to the 4-pixel latent grid) teach it the same local
    mapping as whole images at a quarter of the cost.
    """
    import torch

    gen = np.random.default_rng(derive_seed("vae-batches", seed))
    opt = torch.optim.AdamW(vae.parameters(), lr=lr, weight_decay=0.0)
    vae.train()
    start = time.time()
    done = 0
    for step in range(steps):
        x = to_tensor(_draw_crops(gen, images, marks, batch, crop))
        if gen.random() < 0.5:  # flips are free augmentation for both kinds
            x = x.flip(-1)
        posterior = vae.encode(x).latent_dist
        recon = vae.decode(posterior.sample()).sample
        loss = (recon - x).abs().mean() + (recon - x).pow(2).mean() + 1e-6 * posterior.kl().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        _set_cosine_lr(opt, lr, step, steps)
        opt.step()
        done = step + 1
        if step % 50 == 0:
            logger.info("vae step %d/%d loss %.4f (%.0f s)", step, steps, loss.item(), time.time() - start)
        if time.time() - start > max_seconds:
            logger.info("vae: wall-clock cap reached at step %d", done)
            break
    vae.eval()
    return {"vae_steps": done, "vae_seconds": round(time.time() - start, 1)}


def finetune_decoder(
    vae: Any,
    images: np.ndarray,
    marks: np.ndarray,
    *,
    steps: int,
    batch: int,
    lr: float,
    seed: int,
    max_seconds: float,
    crop: int = 32,
    weight: float = 15.0,
) -> dict[str, Any]:
    """Fine-tune the decoder only, weighting pixels outside the toy normals' muted band ``weight`` times more.

    Trained jointly, the autoencoder spends its capacity on the backgrounds that fill most pixels and washes
    out small saturated, near-white and near-black details (defect IoU after reconstruction stays low). The
    encoder is frozen, so the latents (and a UNet trained on them) stay valid.
    """
    import torch

    from anogen.toy.data import NORMAL_MAX, NORMAL_MIN, NORMAL_SPREAD

    gen = np.random.default_rng(derive_seed("decoder-batches", seed))
    params = [*vae.decoder.parameters(), *vae.post_quant_conv.parameters()]
    vae.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    vae.decoder.train()
    start = time.time()
    done = 0
    for step in range(steps):
        crops = _draw_crops(gen, images, marks, batch, crop)
        c16 = crops.astype(np.int16)
        outside = ((c16 < NORMAL_MIN) | (c16 > NORMAL_MAX)).any(-1) | (np.ptp(c16, axis=-1) > NORMAL_SPREAD)
        w = torch.from_numpy(1.0 + weight * outside.astype(np.float32))[:, None]
        x = to_tensor(crops)
        with torch.no_grad():
            z = vae.encode(x).latent_dist.sample()
        recon = vae.decode(z).sample
        err = recon - x
        loss = ((err.abs() + err.pow(2)) * w).sum() / (w.sum() * 3)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        _set_cosine_lr(opt, lr, step, steps)
        opt.step()
        done = step + 1
        if step % 50 == 0:
            logger.info("decoder step %d/%d loss %.4f (%.0f s)", step, steps, loss.item(), time.time() - start)
        if time.time() - start > max_seconds:
            logger.info("decoder: wall-clock cap reached at step %d", done)
            break
    vae.requires_grad_(False)
    vae.eval()
    return {"decoder_steps": done, "decoder_seconds": round(time.time() - start, 1)}


def encode_prompts(backbone_tokenizer: Any, text_encoder: Any, prompts: list[str]) -> Any:
    """Text embeddings (N x tokens x hidden) of prompts, padded to the tokenizer's max length."""
    import torch

    ids = backbone_tokenizer(
        prompts, padding="max_length", max_length=backbone_tokenizer.model_max_length, truncation=True,
        return_tensors="pt",
    ).input_ids
    with torch.no_grad():
        return text_encoder(ids)[0]


def train_unet(
    unet: Any,
    latents: dict[str, tuple[Any, Any]],
    embeds: dict[str, Any],
    held_out: tuple[Any, Any, Any, Any],
    scheduler_config: dict[str, Any],
    *,
    steps: int,
    batch: int,
    lr: float,
    ema_decay: float,
    seed: int,
    max_seconds: float,
    eval_every: int,
    checkpoint: Any = None,
) -> tuple[Any, dict[str, Any]]:
    """Train the UNet on pooled latents (posterior mean, std) per domain; returns (EMA UNet, figures)."""
    import torch
    from diffusers import DDPMScheduler

    sched = DDPMScheduler.from_config({k: v for k, v in scheduler_config.items() if not k.startswith("_")})
    alphas = sched.alphas_cumprod
    torch.manual_seed(derive_seed("unet-train", seed) % (2**31))
    gen = np.random.default_rng(derive_seed("unet-batches", seed))
    domains = list(DOMAIN_WEIGHTS)
    weights = np.array([DOMAIN_WEIGHTS[d] for d in domains])
    weights = weights / weights.sum()
    ema = copy.deepcopy(unet).requires_grad_(False).eval()
    opt = torch.optim.AdamW(unet.parameters(), lr=lr, weight_decay=0.01)
    unet.train()
    history: list[dict[str, float]] = []
    start = time.time()
    done = 0
    warmup = 200

    def add_noise(x0: Any, noise: Any, t: Any) -> Any:
        a = alphas[t].view(-1, 1, 1, 1)
        return a.sqrt() * x0 + (1 - a).sqrt() * noise

    def held_out_loss(model: Any) -> float:
        x0, noise, t, cond = held_out
        with torch.no_grad():
            pred = model(add_noise(x0, noise, t), t, cond).sample
        return float((pred - noise).pow(2).mean())

    for step in range(steps):
        picks = gen.choice(len(domains), size=batch, p=weights)
        x0_list, cond_list = [], []
        for d_index in picks:
            name = domains[d_index]
            mean, std = latents[name]
            j = int(gen.integers(len(mean)))
            x0_list.append(mean[j] + std[j] * torch.randn_like(std[j]))
            # 10 % empty prompt: the unconditional branch classifier-free guidance needs.
            cond_list.append(embeds[""] if gen.random() < 0.1 else embeds[name])
        x0 = torch.stack(x0_list)
        cond = torch.stack(cond_list)
        noise = torch.randn_like(x0)
        t = torch.randint(0, sched.config.num_train_timesteps, (batch,))
        pred = unet(add_noise(x0, noise, t), t, cond).sample
        loss = (pred - noise).pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        for group in opt.param_groups:
            group["lr"] = lr * min(1.0, (step + 1) / warmup)
        opt.step()
        decay = min(ema_decay, (1 + step) / (10 + step))
        with torch.no_grad():
            for pe, pm in zip(ema.parameters(), unet.parameters(), strict=True):
                pe.mul_(decay).add_(pm.detach(), alpha=1 - decay)
        done = step + 1
        elapsed = time.time() - start
        if step % 25 == 0:
            logger.info("unet step %d/%d loss %.4f (%.0f s, %.2f s/step)", step, steps, loss.item(), elapsed,
                        elapsed / done)
        last = done == steps or elapsed > max_seconds
        if done % eval_every == 0 or last:
            record = {"step": done, "seconds": round(elapsed, 1), "held_out_ema": round(held_out_loss(ema), 5),
                      "held_out_raw": round(held_out_loss(unet.eval()), 5)}
            unet.train()
            history.append(record)
            logger.info("eval %s", json.dumps(record))
            if checkpoint is not None:
                checkpoint(ema, record)
        if elapsed > max_seconds:
            logger.info("unet: wall-clock cap reached at step %d", done)
            break
    return ema, {"unet_steps": done, "unet_seconds": round(time.time() - start, 1), "history": history}

