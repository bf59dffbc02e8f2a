"""The pixels of an exported file: an image as 8-bit RGB or L at its output size, a mask as 0/255.

No torch here.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from anogen.io import mask_to_png_array, to_rgb


def render_image(src: Path, size: tuple[int, int], mode: str) -> Image.Image:
    """Load an image as 8-bit ``mode`` (RGB or L) at ``size`` (bicubic when it must be resized)."""
    with Image.open(src) as img:
        img.load()
        rgb = to_rgb(img)
    out = rgb.convert("L") if mode == "L" else rgb
    if out.size != tuple(size):
        out = out.resize(tuple(size), Image.Resampling.BICUBIC)
    return out


def render_mask(src: Path, size: tuple[int, int]) -> np.ndarray:
    """Load a mask (> 0 is anomalous), resize nearest-neighbour to ``size``, return uint8 0/255."""
    with Image.open(src) as img:
        img.load()
        arr = np.asarray(img)
    if arr.ndim == 3:
        arr = arr[..., :3].max(axis=-1) if arr.shape[-1] >= 3 else arr[..., 0]
    binary = mask_to_png_array(arr > 0)
    if binary.shape[::-1] != tuple(size):
        binary = np.asarray(Image.fromarray(binary).resize(tuple(size), Image.Resampling.NEAREST))
    return binary

