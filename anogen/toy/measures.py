"""Measurements of the toy backbone: autoencoder fidelity, samples, and their distance to the toy normals."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from anogen.toy.data import DEFECTS, defect_image, normal_image
from anogen.toy.images import to_tensor, to_uint8
from anogen.toy.training import encode_prompts


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

