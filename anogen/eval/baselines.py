"""Classical synthetic anomalies made from normal images: the baselines ``anogen eval`` compares against.

- **Perlin** (after DRAEM, Zavrtanik et al. 2021): a thresholded Perlin-noise field is the mask; inside it the
  image is blended with a texture. DRAEM takes textures from the DTD data set; anogen ships none, so the
  texture is another normal image of the category, rotated, shifted and colour-transformed.
- **Cut-paste** (after CutPaste, Li et al. 2021): a rectangle of the image is cut, optionally colour-jittered,
  and pasted at another place.

Both work on uint8 RGB arrays and return ``(image, mask)``. The mask is exact: it is the set of pixels the
generator changed (inside the noise field or rectangle *and* different after rounding), so a pixel outside the
mask is untouched and a pixel inside differs from the original in at least one channel.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

BASELINES = ("none", "perlin", "cutpaste")
_MAX_TRIES = 20


def perlin_noise(shape: tuple[int, int], cells: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """2-D gradient (Perlin) noise with ``cells`` lattice cells along (y, x), scaled by sqrt(2) to about [-1, 1].

    Args:
        shape (`tuple[int, int]`): output (height, width).
        cells (`tuple[int, int]`): lattice cells along y and x (more cells, finer blobs).
        rng (`np.random.Generator`): source of the random gradients.
    """
    height, width = shape
    cy, cx = cells
    angles = rng.uniform(0.0, 2.0 * np.pi, size=(cy + 1, cx + 1))
    grad = np.stack([np.cos(angles), np.sin(angles)], axis=-1)
    ys = np.arange(height) * cy / height
    xs = np.arange(width) * cx / width
    yi = np.floor(ys).astype(int)
    xi = np.floor(xs).astype(int)
    yf = (ys - yi)[:, None]
    xf = (xs - xi)[None, :]

    def corner(dy: int, dx: int) -> np.ndarray:
        g = grad[(yi + dy)[:, None], (xi + dx)[None, :]]
        return g[..., 0] * (yf - dy) + g[..., 1] * (xf - dx)

    def fade(t: np.ndarray) -> np.ndarray:
        return t * t * t * (t * (t * 6.0 - 15.0) + 10.0)

    u, v = fade(xf), fade(yf)
    top = corner(0, 0) * (1 - u) + corner(0, 1) * u
    bottom = corner(1, 0) * (1 - u) + corner(1, 1) * u
    return np.sqrt(2.0) * (top * (1 - v) + bottom * v)


def _exact_mask(original: np.ndarray, result: np.ndarray, region: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Restore every pixel outside ``region`` and return the mask of pixels that really changed."""
    result = np.where(region[..., None], result, original).astype(np.uint8)
    changed = np.any(result != original, axis=-1)
    return result, changed


def _texture(source: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A texture made from a normal image: rotated, shifted and colour-transformed so it reads as foreign."""
    tex = np.rot90(source, k=int(rng.integers(4))).copy()
    if tex.shape != source.shape:  # rot90 of a non-square image: fall back to a flip
        tex = source[::-1].copy()
    tex = np.roll(tex, (int(rng.integers(tex.shape[0])), int(rng.integers(tex.shape[1]))), axis=(0, 1))
    tex = tex[..., rng.permutation(3)]
    op = int(rng.integers(4))
    if op == 0:
        tex = 255 - tex  # invert
    elif op == 1:
        tex = tex & np.uint8(0xE0)  # posterize to 3 bits
    elif op == 2:
        tex = np.where(tex >= 128, 255 - tex, tex)  # solarize
    else:
        tex = np.clip(tex.astype(np.float64) * rng.uniform(0.4, 1.6), 0, 255)
    return tex.astype(np.float64)


def perlin_anomaly(
    image: np.ndarray,
    rng: np.random.Generator,
    *,
    texture_source: np.ndarray | None = None,
    threshold: float = 0.5,
    max_opacity: float = 0.8,
) -> tuple[np.ndarray, np.ndarray]:
    """A DRAEM-style anomaly: a Perlin-noise mask filled with a blended texture.

    Inside the mask the result is ``(1 - beta) * texture + beta * image`` with ``beta ~ U(0, max_opacity)``
    (DRAEM's blending); outside it is the image.

    Args:
        image (`np.ndarray` of shape `(H, W, 3)`, uint8): a normal image.
        rng (`np.random.Generator`): all random choices.
        texture_source (`np.ndarray`, *optional*): a normal image (same shape) the texture is made from;
            defaults to ``image`` itself.
        threshold (`float`, defaults to 0.5): noise level above which a pixel is in the mask.
        max_opacity (`float`, defaults to 0.8): the largest weight the original keeps inside the mask.

    Returns:
        `(image, mask)`: uint8 `(H, W, 3)` and bool `(H, W)`; the mask is exactly the changed pixels. It is
        non-empty unless every try produced no change (only possible for degenerate inputs).
    """
    image = _check_image(image)
    source = image if texture_source is None else _check_image(texture_source)
    height, width = image.shape[:2]
    # Lattice sizes 2^1 .. 2^k with at least ~4 pixels per cell, as DRAEM draws its scale.
    max_power = max(1, int(np.log2(max(2, min(height, width) // 4))))
    result, mask = image, np.zeros((height, width), dtype=bool)
    for _ in range(_MAX_TRIES):
        cy = 2 ** int(rng.integers(1, max_power + 1))
        cx = 2 ** int(rng.integers(1, max_power + 1))
        noise = perlin_noise((height, width), (cy, cx), rng)
        if rng.random() < 0.5:
            noise = noise.T if height == width else noise[::-1]
        region = noise > threshold
        if not region.any():
            continue
        beta = rng.uniform(0.0, max_opacity)
        blended = (1.0 - beta) * _texture(source, rng) + beta * image.astype(np.float64)
        result, mask = _exact_mask(image, np.clip(np.rint(blended), 0, 255), region)
        if mask.any():
            break
    return result, mask


def cutpaste_anomaly(
    image: np.ndarray,
    rng: np.random.Generator,
    *,
    area_ratio: tuple[float, float] = (0.02, 0.15),
    aspect_ratio: tuple[float, float] = (0.3, 3.3),
    jitter: float = 0.1,
) -> tuple[np.ndarray, np.ndarray]:
    """A CutPaste anomaly: a rectangle cut from the image, colour-jittered, pasted somewhere else.

    Args:
        image (`np.ndarray` of shape `(H, W, 3)`, uint8): a normal image.
        rng (`np.random.Generator`): all random choices.
        area_ratio (`tuple[float, float]`): the patch's share of the image area, drawn uniformly.
        aspect_ratio (`tuple[float, float]`): width / height, drawn log-uniformly.
        jitter (`float`, defaults to 0.1): brightness factor range ``1 +- jitter`` per channel.

    Returns:
        `(image, mask)`: uint8 `(H, W, 3)` and bool `(H, W)`; the mask is exactly the changed pixels.
    """
    image = _check_image(image)
    height, width = image.shape[:2]
    result, mask = image, np.zeros((height, width), dtype=bool)
    for _ in range(_MAX_TRIES):
        area = rng.uniform(*area_ratio) * height * width
        aspect = float(np.exp(rng.uniform(np.log(aspect_ratio[0]), np.log(aspect_ratio[1]))))
        w = int(np.clip(round(np.sqrt(area * aspect)), 1, width))
        h = int(np.clip(round(np.sqrt(area / aspect)), 1, height))
        sy, sx = int(rng.integers(height - h + 1)), int(rng.integers(width - w + 1))
        ty, tx = int(rng.integers(height - h + 1)), int(rng.integers(width - w + 1))
        patch = image[sy : sy + h, sx : sx + w].astype(np.float64)
        patch = np.clip(np.rint(patch * rng.uniform(1 - jitter, 1 + jitter, size=3)), 0, 255)
        pasted = image.astype(np.float64).copy()
        pasted[ty : ty + h, tx : tx + w] = patch
        region = np.zeros((height, width), dtype=bool)
        region[ty : ty + h, tx : tx + w] = True
        result, mask = _exact_mask(image, pasted, region)
        if mask.any():
            break
    return result, mask


def make_anomaly(
    kind: str, image: np.ndarray, rng: np.random.Generator, normals: Sequence[np.ndarray] = ()
) -> tuple[np.ndarray, np.ndarray]:
    """One classical anomaly of ``kind`` (``perlin`` or ``cutpaste``) made from ``image``.

    For ``perlin`` the texture comes from a random member of ``normals`` (or ``image`` when empty).
    """
    if kind == "perlin":
        source = normals[int(rng.integers(len(normals)))] if len(normals) else None
        return perlin_anomaly(image, rng, texture_source=source)
    if kind == "cutpaste":
        return cutpaste_anomaly(image, rng)
    raise ValueError(f"unknown classical anomaly {kind!r}; expected perlin or cutpaste")


def _check_image(image: np.ndarray) -> np.ndarray:
    arr = np.asarray(image)
    if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[-1] != 3:
        raise ValueError(f"expected a uint8 (H, W, 3) image, got {arr.dtype} {arr.shape}")
    return arr
