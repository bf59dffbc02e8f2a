"""Pretrain the ``toy`` backbone on the toy world: ``python -m anogen.toy.pretrain --out DIR``.

Recipe (one command, CPU-friendly; about 1.5 hours on 2 shared cores, see docs/toy.md):

1. **Autoencoder.** A diffusers ``AutoencoderKL`` with 3 blocks (4x downsampling: 64 px -> 16x16x4 latents),
   trained on L1 + MSE + a tiny KL term on toy normals, part canvases, marked normals and *generic* marks of
   any colour (thin lines and discs included: an autoencoder must reconstruct whatever it is shown, and the
   UNet never sees these images). Its ``scaling_factor`` is set to 1 / std of the latents, as SD's is.
   Then a decoder-only fine-tune (:func:`finetune_decoder`) that weighs pixels outside the normals' band more.
2. **Text encoder.** A small ``CLIPTextModel`` (hidden size 64) with random, frozen weights, seeded: distinct
   prompts give distinct embeddings, which is all the cross-attention needs to tell the domains apart, and
   the fitted adapters later learn their own prompts through LoRA.
3. **UNet.** A ~4M-parameter ``UNet2DConditionModel`` on 16x16 latents, epsilon prediction with SD's
   scaled-linear DDPM schedule, 10 % prompt dropout (for classifier-free guidance), EMA of the weights.
   Domains, each under its own prompt (:data:`anogen.toy.data.PROMPTS`): object normals, texture normals,
   part canvases (grey with generic marks), and normals carrying generic marks.

Stopping measure: a fixed step budget (``--unet-steps``, with a wall-clock cap ``--max-minutes`` for shared
machines). Every ``--eval-every`` steps the held-out denoising loss of the EMA weights is logged, on held-out
images with fixed noise and fixed timesteps spread over [0, 1000); the final value goes into ``recipe.json``.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import math
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from anogen.io import sha256_file, write_json_atomic
from anogen.seeding import derive_seed
from anogen.toy.data import DEFECTS, PROMPTS, defect_image, iter_domain, normal_image

logger = logging.getLogger("anogen.toy.pretrain")

DOMAIN_WEIGHTS = {"object": 0.28, "texture": 0.28, "part": 0.28, "object_marked": 0.08, "texture_marked": 0.08}
RESOLUTION = 64



def _set_cosine_lr(opt: Any, lr: float, step: int, steps: int) -> None:
    """Cosine decay from ``lr`` to 10 % of it: the last steps must not undo fine detail."""
    for group in opt.param_groups:
        group["lr"] = lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * step / steps)))

def toy_configs(resolution: int = RESOLUTION) -> dict[str, dict[str, Any]]:
    """Configs of the toy backbone: 4x AutoencoderKL, ~4M-parameter UNet, hidden-64 CLIP text encoder."""
    from anogen.model.backbone import small_text_encoder_config, tiny_configs

    base = tiny_configs()
    hidden = 64
    return {
        "vae": dict(
            sample_size=resolution,
            in_channels=3,
            out_channels=3,
            latent_channels=4,
            block_out_channels=(32, 64, 64),
            down_block_types=("DownEncoderBlock2D",) * 3,
            up_block_types=("UpDecoderBlock2D",) * 3,
            layers_per_block=1,
            norm_num_groups=16,
            scaling_factor=1.0,
        ),
        "unet": dict(
            sample_size=resolution // 4,
            in_channels=4,
            out_channels=4,
            block_out_channels=(48, 96, 96),
            layers_per_block=1,
            down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
            cross_attention_dim=hidden,
            attention_head_dim=8,
            norm_num_groups=16,
        ),
        "text_encoder": small_text_encoder_config(hidden_size=hidden),
        "scheduler": dict(base["scheduler"]),
    }


# ---------------------------------------------------------------------------------------------- images


def to_tensor(images: list[np.ndarray] | np.ndarray) -> Any:
    """uint8 NxHxWx3 -> float tensor Nx3xHxW in [-1, 1]."""
    import torch

    arr = np.stack(images) if isinstance(images, list) else images
    return torch.from_numpy(arr.astype(np.float32) / 127.5 - 1.0).permute(0, 3, 1, 2).contiguous()


def to_uint8(tensor: Any) -> np.ndarray:
    """float tensor Nx3xHxW in [-1, 1] -> uint8 NxHxWx3."""
    arr = ((tensor.detach().float().clamp(-1, 1) + 1.0) * 127.5).round().byte().permute(0, 2, 3, 1)
    return arr.cpu().numpy()


def _generic_marks_image(rng: np.random.Generator, seed: int, index: int, size: int) -> np.ndarray:
    """Autoencoder-only images: a toy background with marks of *any* colour and shape (lines, discs too)."""
    from PIL import Image, ImageDraw

    choice = rng.integers(3)
    if choice == 0:
        base = np.full((size, size, 3), 128, np.uint8)
    else:
        base = normal_image(("object", "texture")[choice - 1], seed, index, size, split="vae")[0]
    img = Image.fromarray(base)
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(2, 7))):
        # Any colour, with the extremes (the 8 corners of the RGB cube: white, black, primaries...) often.
        if rng.random() < 0.6:
            corner = rng.integers(0, 2, 3) * 255
            colour = tuple(int(c) for c in np.clip(corner + rng.integers(-30, 31, 3), 0, 255))
        else:
            colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        x0, y0 = rng.uniform(0, size, 2)
        s = rng.uniform(2, 12) * size / 64
        kind = rng.integers(3)
        if kind == 0:
            x1, y1 = rng.uniform(0, size, 2)
            draw.line([(x0, y0), (x1, y1)], fill=colour, width=int(rng.integers(1, 4)))
        elif kind == 1:
            draw.ellipse((x0 - s, y0 - s, x0 + s * rng.uniform(0.5, 1.5), y0 + s), fill=colour)
        else:
            draw.rectangle((x0 - s, y0 - s, x0 + s, y0 + s), fill=colour)
    return np.asarray(img)


def build_pool(domain: str, seed: int, count: int, size: int = RESOLUTION, start: int = 0) -> np.ndarray:
    """``count`` uint8 images of a pretraining domain, from the toy generators."""
    stream = iter_domain(domain, seed, start=start, size=size)
    return np.stack([next(stream) for _ in range(count)])


# ---------------------------------------------------------------------------------------------- training


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


def measure_vae(vae: Any, seed: int, n_per_defect: int = 10) -> dict[str, float]:
    """PSNR on held-out toy normals and defect images, and defect IoU after reconstruction (by the colour rule)."""
    import torch

    from anogen.toy.data import defect_pixels

    images, defects = [], []
    for kind in ("object", "texture"):
        for i in range(16):
            images.append(normal_image(kind, seed + 1000, i, split="measure")[0])
        for defect in DEFECTS:
            for i in range(n_per_defect):
                img, mask, _ = defect_image(kind, defect, seed + 1000, i)
                defects.append((img, mask, defect))
    figures: dict[str, float] = {}
    with torch.no_grad():
        recon = to_uint8(vae.decode(vae.encode(to_tensor(images)).latent_dist.mode()).sample)
        figures["psnr_normals_db"] = _psnr(np.stack(images), recon)
        d_images = np.stack([d[0] for d in defects])
        d_recon = to_uint8(vae.decode(vae.encode(to_tensor(d_images)).latent_dist.mode()).sample)
    figures["psnr_defects_db"] = _psnr(d_images, d_recon)
    for defect in DEFECTS:
        ious = [
            _iou(defect_pixels(rec, defect), mask)
            for (img, mask, name), rec in zip(defects, d_recon, strict=True)
            if name == defect
        ]
        figures[f"defect_iou_{defect}"] = float(np.mean(ious))
    figures["defect_iou_mean"] = float(np.mean([figures[f"defect_iou_{d}"] for d in DEFECTS]))
    return {k: round(v, 4) for k, v in figures.items()}


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float(10 * np.log10(255.0**2 / max(mse, 1e-10)))


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


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


# ---------------------------------------------------------------------------------------------- sampling


def sample(
    backbone: Any,
    prompts: list[str],
    *,
    steps: int = 20,
    guidance: float = 2.5,
    seed: int = 0,
    sampler: str = "dpmsolver++",
) -> np.ndarray:
    """Generate one image per prompt with classifier-free guidance; returns uint8 NxHxWx3."""
    import torch

    scheduler = backbone.make_scheduler(sampler)
    scheduler.set_timesteps(steps)
    tok, te = backbone.tokenizer, backbone.text_encoder
    cond = encode_prompts(tok, te, prompts)
    uncond = encode_prompts(tok, te, [""] * len(prompts))
    size = backbone.unet.config.sample_size
    g = torch.Generator().manual_seed(seed)
    latents = torch.randn((len(prompts), backbone.latent_channels, size, size), generator=g)
    latents = latents * scheduler.init_noise_sigma
    with torch.no_grad():
        for t in scheduler.timesteps:
            inp = scheduler.scale_model_input(torch.cat([latents, latents]), t)
            eps = backbone.unet(inp, t, torch.cat([uncond, cond])).sample
            eps_u, eps_c = eps.chunk(2)
            latents = scheduler.step(eps_u + guidance * (eps_c - eps_u), t, latents).prev_sample
        images = backbone.vae.decode(latents / backbone.scaling_factor).sample
    return to_uint8(images)


def save_grid(rows: list[np.ndarray], path: Path, scale: int = 2) -> None:
    """Write rows of uint8 images (each row NxHxWx3) as one PNG grid, upscaled nearest-neighbour."""
    from PIL import Image

    from anogen.io import save_png_atomic

    grid = np.concatenate([np.concatenate(list(row), axis=1) for row in rows], axis=0)
    img = Image.fromarray(grid)
    save_png_atomic(path, img.resize((img.width * scale, img.height * scale), Image.Resampling.NEAREST))


# ---------------------------------------------------------------------------------------------- measures


def _features(images: np.ndarray, cells: int = 16) -> np.ndarray:
    """Images as vectors of their cells x cells block means (RGB, 0-255): fine texture noise averages out."""
    n, h, w, c = images.shape
    blocks = images.astype(np.float64).reshape(n, cells, h // cells, cells, w // cells, c).mean(axis=(2, 4))
    return blocks.reshape(n, -1)


def nn_distance(queries: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Per query image: RMS distance (0-255 scale) to its nearest reference image, on 16x16 block means."""
    q, r = _features(queries), _features(reference)
    d2 = (q**2).sum(1)[:, None] + (r**2).sum(1)[None, :] - 2 * q @ r.T
    return np.sqrt(np.maximum(d2.min(axis=1), 0) / q.shape[1])


def normal_spread(kind: str, seed: int = 4242, n_reference: int = 64, n_query: int = 32) -> tuple[np.ndarray, float]:
    """Reference toy normals of a kind and the spread among them: the 95th percentile of real NN distances.

    Returns:
        (reference images, spread): a sample within ``margin * spread`` of the reference looks as close to the
        toy normals as real normals do (``margin`` is the caller's stated tolerance).
    """
    reference = np.stack([normal_image(kind, seed, i, split="reference")[0] for i in range(n_reference)])
    queries = np.stack([normal_image(kind, seed, i, split="query")[0] for i in range(n_query)])
    return reference, float(np.percentile(nn_distance(queries, reference), 95))


def grey_fraction(images: np.ndarray, tolerance: int = 12) -> np.ndarray:
    """Per image: the fraction of pixels whose every channel is within ``tolerance`` of neutral grey (128)."""
    return (np.abs(images.astype(np.int16) - 128).max(axis=-1) <= tolerance).mean(axis=(1, 2))


def mark_fraction(images: np.ndarray, distance: int = 40) -> np.ndarray:
    """Per image: the fraction of pixels at least ``distance`` away from neutral grey in some channel."""
    return (np.abs(images.astype(np.int16) - 128).max(axis=-1) >= distance).mean(axis=(1, 2))


# ---------------------------------------------------------------------------------------------- main


def file_hashes(folder: Path) -> dict[str, str]:
    """sha256 of every file of a backbone folder except recipe.json, by relative path."""
    return {
        str(p.relative_to(folder)): sha256_file(p)
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != "recipe.json"
    }


def pretrain(args: argparse.Namespace) -> Path:
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from anogen.model.backbone import Backbone, module_hash, save_backbone
    from anogen.model.tokenizer import build_char_tokenizer

    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    # Checkpoints and the sample grid go beside the asset, so OUT holds exactly what ships.
    work = Path(args.work) if args.work else out.with_name(out.name + "-work")
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    configs = toy_configs()
    seed = args.seed

    torch.manual_seed(derive_seed("toy-init", seed, "vae") % (2**31))
    vae = AutoencoderKL(**configs["vae"])
    torch.manual_seed(derive_seed("toy-init", seed, "text") % (2**31))
    text_encoder = CLIPTextModel(CLIPTextConfig(**configs["text_encoder"])).eval().requires_grad_(False)
    torch.manual_seed(derive_seed("toy-init", seed, "unet") % (2**31))
    unet = UNet2DConditionModel(**configs["unet"])
    tokenizer = build_char_tokenizer(tempfile.mkdtemp(prefix="anogen-toy-tok-"))
    n_params = {name: sum(p.numel() for p in m.parameters()) for name, m in
                (("unet", unet), ("vae", vae), ("text_encoder", text_encoder))}
    logger.info("parameters %s", n_params)

    # ---- data pools (deterministic by seed)
    pools = {d: build_pool(d, seed, int(args.pool * DOMAIN_WEIGHTS[d] / max(DOMAIN_WEIGHTS.values())))
             for d in DOMAIN_WEIGHTS}
    gen = np.random.default_rng(derive_seed("vae-extra", seed))
    extra = np.stack([_generic_marks_image(gen, seed, i, RESOLUTION) for i in range(args.pool)])
    logger.info("pools %s + %d generic-mark images (%.0f s)", {k: len(v) for k, v in pools.items()}, len(extra),
                time.time() - t0)

    # ---- autoencoder
    vae_images = np.concatenate(list(pools.values()))
    vae_figures = train_vae(vae, vae_images, extra, steps=args.vae_steps, batch=args.vae_batch, lr=args.vae_lr,
                            seed=seed, max_seconds=args.vae_minutes * 60)
    vae.requires_grad_(False)
    vae_figures.update({f"joint_{k}": v for k, v in measure_vae(vae, seed).items()})
    if args.decoder_steps > 0:
        vae_figures.update(finetune_decoder(vae, vae_images, extra, steps=args.decoder_steps, batch=args.vae_batch,
                                            lr=args.decoder_lr, seed=seed, max_seconds=args.decoder_minutes * 60))
    vae_figures.update(measure_vae(vae, seed))
    logger.info("vae figures %s", vae_figures)

    # ---- latents of the pools; SD-style scaling so latents have unit variance
    latents: dict[str, tuple[Any, Any]] = {}
    with torch.no_grad():
        for name, images in pools.items():
            means, stds = [], []
            for i in range(0, len(images), 64):
                dist = vae.encode(to_tensor(images[i:i + 64])).latent_dist
                means.append(dist.mean)
                stds.append(dist.std)
            latents[name] = (torch.cat(means), torch.cat(stds))
    scaling = float(1.0 / torch.cat([m for m, _ in latents.values()]).std())
    vae.register_to_config(scaling_factor=scaling)
    latents = {k: (m * scaling, s * scaling) for k, (m, s) in latents.items()}
    logger.info("scaling factor %.4f (%.0f s)", scaling, time.time() - t0)

    embeds = {name: e for name, e in zip(
        [*DOMAIN_WEIGHTS, ""], encode_prompts(tokenizer, text_encoder, [PROMPTS[d] for d in DOMAIN_WEIGHTS] + [""]),
        strict=True)}

    # ---- held-out set: fresh images per domain, fixed noise and timesteps
    g = torch.Generator().manual_seed(derive_seed("held-out", seed) % (2**31))
    ho_x, ho_c = [], []
    for name in DOMAIN_WEIGHTS:
        imgs = build_pool(name, seed + 777, 16)
        with torch.no_grad():
            ho_x.append(vae.encode(to_tensor(imgs)).latent_dist.mean * scaling)
        ho_c.extend([embeds[name]] * 16)
    ho_x = torch.cat(ho_x)
    held_out = (ho_x, torch.randn(ho_x.shape, generator=g),
                torch.linspace(0, 999, len(ho_x)).round().long()[torch.randperm(len(ho_x), generator=g)],
                torch.stack(ho_c))

    def assemble(unet_module: Any) -> Backbone:
        return Backbone(unet=unet_module, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
                        scheduler_config=configs["scheduler"], source="toy", content_hash="")

    def checkpoint(ema_unet: Any, record: dict[str, Any]) -> None:
        save_backbone(assemble(ema_unet), work / "checkpoint", fp16=True)
        write_json_atomic(work / "checkpoint" / "progress.json", record)

    ema, unet_figures = train_unet(
        unet, latents, embeds, held_out, configs["scheduler"], steps=args.unet_steps, batch=args.batch,
        lr=args.lr, ema_decay=args.ema_decay, seed=seed, max_seconds=args.max_minutes * 60 - (time.time() - t0),
        eval_every=args.eval_every, checkpoint=checkpoint,
    )

    # ---- write the asset: fp16 EMA weights in the SD-1.x diffusers layout
    backbone = assemble(ema)
    save_backbone(backbone, out, fp16=True)
    wall = round(time.time() - t0, 1)
    # Samples of the base for each prompt, from the fp16 files as shipped.
    from anogen.model.backbone import load_folder

    shipped = load_folder(out, source="toy")
    rows = [sample(shipped, [PROMPTS[p]] * 8, steps=25, seed=s) for p, s in
            (("object", 1), ("texture", 2), ("part", 3), ("object_marked", 4), ("texture_marked", 5))]
    save_grid(rows, work / "samples.png")
    recipe = {
        "recipe": "python -m anogen.toy.pretrain " + " ".join(args.argv),
        "data_seed": seed,
        "prompts": {d: PROMPTS[d] for d in DOMAIN_WEIGHTS},
        "domain_weights": DOMAIN_WEIGHTS,
        "pool_sizes": {k: len(v) for k, v in pools.items()},
        "parameters": n_params,
        "configs": {k: {kk: list(vv) if isinstance(vv, tuple) else vv for kk, vv in v.items()}
                    for k, v in configs.items()},
        "scaling_factor": scaling,
        "batch": args.batch,
        "lr": args.lr,
        "ema_decay": args.ema_decay,
        "threads": args.threads,
        "wall_seconds": wall,
        "torch": torch.__version__,
        "module_hash_fp32": module_hash(backbone),
        **vae_figures,
        **{k: v for k, v in unet_figures.items()},
        "stopping": "fixed step budget (unet_steps) with a wall-clock cap; held-out EMA denoising loss logged",
    }
    recipe["sha256"] = file_hashes(out)
    write_json_atomic(out / "recipe.json", recipe)
    logger.info("done in %.0f s -> %s", time.time() - t0, out)
    return out


def main(argv: list[str] | None = None) -> None:
    import sys

    parser = argparse.ArgumentParser(prog="python -m anogen.toy.pretrain", description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="output folder (a diffusers backbone folder)")
    parser.add_argument("--work", default=None, help="checkpoints and sample grid (default: OUT-work)")
    parser.add_argument("--seed", type=int, default=0, help="data and init seed")
    parser.add_argument("--pool", type=int, default=1600, help="images per main domain in the training pool")
    parser.add_argument("--vae-steps", type=int, default=4000)
    parser.add_argument("--vae-batch", type=int, default=16)
    parser.add_argument("--vae-lr", type=float, default=1e-3)
    parser.add_argument("--vae-minutes", type=float, default=12.0, help="wall-clock cap of the autoencoder phase")
    parser.add_argument("--decoder-steps", type=int, default=4000, help="decoder-only fine-tune (0: none)")
    parser.add_argument("--decoder-lr", type=float, default=3e-4)
    parser.add_argument("--decoder-minutes", type=float, default=27.0, help="wall-clock cap of the decoder phase")
    parser.add_argument("--unet-steps", type=int, default=6000)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--lr", type=float, default=4e-4)
    parser.add_argument("--ema-decay", type=float, default=0.999)
    parser.add_argument("--eval-every", type=int, default=200)
    parser.add_argument("--max-minutes", type=float, default=95.0, help="wall-clock cap of the whole run")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (1 on a shared machine: a starved second thread only waits)")
    args = parser.parse_args(argv)
    args.argv = list(argv if argv is not None else sys.argv[1:])
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    pretrain(args)


if __name__ == "__main__":
    main()
