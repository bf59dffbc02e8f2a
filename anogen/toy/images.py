"""The toy backbone's pretraining images: pools per domain, generic marks for the autoencoder, tensor conversion."""

from __future__ import annotations

from typing import Any

import numpy as np

from anogen.toy.data import iter_domain, normal_image

RESOLUTION = 64


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
