"""Procedural toy data: MVTec AD-style categories whose defects can be found again by their colour.

Two kinds of product, both deterministic by seed (the same seed writes the same bytes):

- ``object``: a round, shaded object on a background (``plain`` or ``textured``), with its silhouette
  written as an object mask in ``<cat>/object_masks/<split>/<stem>.png``.
- ``texture``: a woven, noisy surface that fills the image.

Three defect types with distinct looks. Their colours never occur in a normal image, which is what makes
them detectable by a stated rule (:func:`defect_pixels`):

=========  ===================================  ==============================================
defect     look                                 rule on an RGB uint8 pixel (R, G, B)
=========  ===================================  ==============================================
stain      irregular saturated magenta blob     R - G > 75 and B - G > 40 and R >= 150
scratch    thin near-white line (2 px at 64)    min(R, G, B) >= 226
hole       near-black disc                      max(R, G, B) <= 49
=========  ===================================  ==============================================

Normal pixels are kept in a *muted band* (every channel in [50, 225], max - min <= 70), where none of the
rules fires; defects are drawn hard-edged (no anti-aliasing) in their colour, so a ground-truth mask equals
``defect_pixels(image, defect)`` exactly. The rules sit just outside the band (the painted colours lie well
beyond them: stain ~(215, 30, 165), scratch ~248, hole ~14), so that a defect blurred a little by an
autoencoder or drawn a little paler by a generator is still found.

The pretraining also uses *part canvases*: neutral grey (128, i.e. 0 in [-1, 1]) with marks of many shapes
and colours, and normals carrying the same kind of generic marks. Those marks never use the defect families
(no round blobs, no thin lines, no magenta, near-white or near-black), so the defect types stay unseen until
few-shot fitting.
"""

from __future__ import annotations

import colorsys
import logging
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from anogen.errors import InputError
from anogen.io import mask_to_png_array, save_png_atomic, write_json_atomic
from anogen.progress import ProgressCallback, report
from anogen.seeding import derive_seed

logger = logging.getLogger(__name__)

KINDS = ("object", "texture")
BACKGROUNDS = ("plain", "textured")
DEFECTS = ("stain", "scratch", "hole")
GREY = 128
# Prompts of the pretraining domains; the fitted adapters use their own prompts (presets).
PROMPTS = {
    "object": "a photo of a toy object",
    "texture": "a toy texture",
    "part": "marks on grey",
    "object_marked": "a toy object with marks",
    "texture_marked": "a toy texture with marks",
}
# The band every normal pixel lies in: no defect rule can fire inside it.
NORMAL_MIN, NORMAL_MAX, NORMAL_SPREAD = 50, 225, 70

Rng = np.random.Generator


# ------------------------------------------------------------------------------------------------ rules


def defect_pixels(image_rgb_uint8: np.ndarray, defect: str) -> np.ndarray:
    """The pixels of an image that show a toy defect type, by the colour rule of that type.

    Args:
        image_rgb_uint8 (`np.ndarray`): HxWx3 uint8 RGB image.
        defect (`str`): ``stain``, ``scratch`` or ``hole``.

    Returns:
        `np.ndarray`: HxW boolean array, True where the pixel's colour belongs to the defect type.
    """
    image = np.asarray(image_rgb_uint8)
    if image.ndim != 3 or image.shape[-1] < 3:
        raise InputError(f"defect_pixels needs an HxWx3 RGB image, got shape {image.shape}")
    rgb = image[..., :3].astype(np.int16)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    if defect == "stain":
        # R >= 150 keeps blue-violet marks (R ~120) out; R - G > 75 is already outside the normal band.
        return (r - g > 75) & (b - g > 40) & (r >= 150)
    if defect == "scratch":
        return rgb.min(axis=-1) >= 226
    if defect == "hole":
        return rgb.max(axis=-1) <= 49
    raise InputError(f"unknown toy defect {defect!r} (choose from {', '.join(DEFECTS)})")


def _muted(image: np.ndarray) -> np.ndarray:
    """Clamp a float RGB image into the normal band (channel range and colour spread) and round to uint8."""
    image = np.clip(image, NORMAL_MIN, NORMAL_MAX)
    mean = image.mean(axis=-1, keepdims=True)
    spread = image.max(axis=-1, keepdims=True) - image.min(axis=-1, keepdims=True)
    # Pull over-saturated pixels toward their grey so max - min stays within the band.
    factor = np.minimum(1.0, (NORMAL_SPREAD - 1) / np.maximum(spread, 1e-6))
    image = mean + (image - mean) * factor
    return np.clip(np.round(image), NORMAL_MIN, NORMAL_MAX).astype(np.uint8)


# ---------------------------------------------------------------------------------------------- drawing


def _smooth_noise(rng: Rng, size: int, cells: int) -> np.ndarray:
    """Low-frequency noise in about [-1, 1]: a random grid upsampled bicubically."""
    grid = rng.standard_normal((cells, cells)).astype(np.float32)
    img = Image.fromarray(grid, mode="F").resize((size, size), Image.Resampling.BICUBIC)
    return np.asarray(img, dtype=np.float32)


def _plain_background(rng: Rng, size: int) -> np.ndarray:
    base = np.array([178.0, 174.0, 162.0]) + rng.uniform(-10, 10, 3)
    image = np.broadcast_to(base, (size, size, 3)).astype(np.float32)
    shade = _smooth_noise(rng, size, 3)[..., None] * 4.0
    return image + shade + rng.normal(0, 2.0, (size, size, 3))


def _textured_background(rng: Rng, size: int) -> np.ndarray:
    """A noisy background with structure at several scales (for object-mask extraction tests)."""
    f = size / 64.0
    base = np.array([150.0, 140.0, 118.0]) + rng.uniform(-12, 12, 3)
    low = _smooth_noise(rng, size, 4) * 14.0 + _smooth_noise(rng, size, 12) * 9.0
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    angle = rng.uniform(0, np.pi)
    period = rng.uniform(5.0, 9.0) * f
    stripes = np.sin(2 * np.pi * (xx * np.cos(angle) + yy * np.sin(angle)) / period + rng.uniform(0, 6.3)) * 8.0
    image = base + (low + stripes)[..., None] + rng.normal(0, 7.0, (size, size, 3))
    return image


def _object_normal(rng: Rng, size: int, background: str) -> tuple[np.ndarray, np.ndarray]:
    """A shaded elliptical object with a lighter cap, on a background; returns (float image, object mask)."""
    f = size / 64.0
    image = _plain_background(rng, size) if background == "plain" else _textured_background(rng, size)
    cy, cx = size / 2 + rng.uniform(-4, 4, 2) * f
    ry, rx = rng.uniform(16.5, 21.0, 2) * f
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    dist = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2
    obj = dist <= 1.0
    colour = np.array([98.0, 116.0, 142.0]) + rng.uniform(-10, 10, 3)
    # Light from the top left: a linear shading across the object, a darker rim and a lighter cap.
    shading = (-(yy - cy) / ry - (xx - cx) / rx) * 9.0
    body = colour + shading[..., None]
    body = np.where((dist > 0.78)[..., None], body - 22.0, body)
    cap_r = rng.uniform(0.28, 0.4)
    cap_dy, cap_dx = rng.uniform(-0.12, 0.12, 2)
    cap = ((yy - cy) / ry - cap_dy) ** 2 + ((xx - cx) / rx - cap_dx) ** 2 <= cap_r**2
    body = np.where(cap[..., None], body + np.array([38.0, 36.0, 30.0]), body)
    body = body + rng.normal(0, 2.0, (size, size, 3))
    image = np.where(obj[..., None], body, image)
    return image, obj


def _texture_normal(rng: Rng, size: int) -> np.ndarray:
    """A woven surface: two crossed sinusoids with random period, angle and phase, plus noise."""
    f = size / 64.0
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    base = np.array([152.0, 128.0, 98.0]) + rng.uniform(-10, 10, 3)
    angle = rng.uniform(-0.2, 0.2)
    period = rng.uniform(7.0, 9.0) * f
    u = xx * np.cos(angle) + yy * np.sin(angle)
    v = -xx * np.sin(angle) + yy * np.cos(angle)
    pu, pv = rng.uniform(0, 2 * np.pi, 2)
    weave = np.sin(2 * np.pi * u / period + pu) * np.sin(2 * np.pi * v / period + pv)
    fibre = np.sin(2 * np.pi * u / (period / 3.0) + pu) * 0.25
    value = (weave + fibre) * 26.0 + _smooth_noise(rng, size, 5) * 6.0
    image = base + value[..., None] + rng.normal(0, 4.0, (size, size, 3))
    return image


def _draw_mask(size: int, draw: Callable[[ImageDraw.ImageDraw], None]) -> np.ndarray:
    """Run a PIL drawing on a blank single-channel canvas (PIL does not anti-alias) and return a bool mask."""
    canvas = Image.new("L", (size, size), 0)
    draw(ImageDraw.Draw(canvas))
    return np.asarray(canvas) > 0


def _point_in(rng: Rng, region: np.ndarray, margin_mask: np.ndarray | None = None) -> tuple[float, float]:
    """A random pixel centre inside a region (row, col)."""
    ys, xs = np.nonzero(region if margin_mask is None else region & margin_mask)
    if len(ys) == 0:
        ys, xs = np.nonzero(region)
    i = rng.integers(len(ys))
    return float(ys[i]) + 0.5, float(xs[i]) + 0.5


def _defect_shape(rng: Rng, size: int, defect: str, region: np.ndarray) -> np.ndarray:
    """The boolean footprint of one defect placed inside ``region``."""
    f = size / 64.0
    core = _erode(region, int(round(6 * f)))
    cy, cx = _point_in(rng, region, core)
    if defect == "stain":
        blobs = []
        for _ in range(int(rng.integers(3, 6))):
            r = rng.uniform(2.5, 4.5) * f
            oy, ox = rng.uniform(-3.5, 3.5, 2) * f
            blobs.append((cx + ox - r, cy + oy - r, cx + ox + r, cy + oy + r))

        def draw(d: ImageDraw.ImageDraw) -> None:
            for box in blobs:
                d.ellipse(box, fill=255)

    elif defect == "scratch":
        length = rng.uniform(14, 26) * f
        angle = rng.uniform(0, np.pi)
        bend = rng.uniform(-0.35, 0.35)
        points = []
        for t in np.linspace(-0.5, 0.5, 5):
            a = angle + bend * t
            points.append((cx + np.cos(a) * length * t, cy + np.sin(a) * length * t))
        width = max(2, int(round(2 * f)))

        def draw(d: ImageDraw.ImageDraw) -> None:
            d.line(points, fill=255, width=width)

    elif defect == "hole":
        ry, rx = rng.uniform(2.5, 4.5, 2) * f

        def draw(d: ImageDraw.ImageDraw) -> None:
            d.ellipse((cx - rx, cy - ry, cx + rx, cy + ry), fill=255)

    else:
        raise InputError(f"unknown toy defect {defect!r} (choose from {', '.join(DEFECTS)})")
    return _draw_mask(size, draw) & region


def _erode(mask: np.ndarray, radius: int) -> np.ndarray:
    if radius <= 0:
        return mask
    from scipy.ndimage import binary_erosion

    return binary_erosion(mask, iterations=radius)


def _paint_defect(rng: Rng, image: np.ndarray, mask: np.ndarray, defect: str) -> np.ndarray:
    """Paint a defect's colour into a uint8 image, with a little noise that stays inside the defect's rule."""
    out = image.copy()
    n = int(mask.sum())
    if defect == "stain":
        colour = np.array([215.0, 30.0, 165.0]) + rng.uniform(-8, 8, 3)
        pixels = colour + rng.normal(0, 5.0, (n, 3))
        pixels[:, 1] = np.clip(pixels[:, 1], 0, 60)
        pixels[:, 0] = np.clip(pixels[:, 0], 180, 255)
        pixels[:, 2] = np.clip(pixels[:, 2], 140, 255)
    elif defect == "scratch":
        pixels = 248.0 + rng.normal(0, 3.0, (n, 1)) + rng.normal(0, 1.5, (n, 3))
        pixels = np.clip(pixels, 238, 255)
    else:  # hole
        pixels = 14.0 + rng.normal(0, 4.0, (n, 1)) + rng.normal(0, 2.0, (n, 3))
        pixels = np.clip(pixels, 0, 30)
    out[mask] = np.round(pixels).astype(np.uint8)
    return out


# ---------------------------------------------------------------------------------- generic marks


def _mark_colour(rng: Rng) -> np.ndarray:
    """A colour for generic marks: any hue but the stain's magenta band, never near-white nor near-black."""
    while True:
        hue = rng.uniform(0, 1)
        if 0.75 <= hue <= 0.97:  # magenta-purple: the stain family
            continue
        sat = rng.uniform(0.25, 1.0)
        val = rng.uniform(0.3, 0.85)
        rgb = np.array(colorsys.hsv_to_rgb(hue, sat, val)) * 255.0
        rgb = np.clip(rgb, 45, 222)
        # A fixed filter (not the current stain rule), so the pretraining data stay byte-identical when a rule
        # is tuned; tests check that no rule fires on these marks.
        r, g, b = np.round(rgb)
        if not (r - g > 100 and b - g > 60):
            return rgb


def _mark_shape(rng: Rng, size: int) -> np.ndarray:
    """One generic mark: a polygon, rectangle, ring, cross or thick zigzag (no round blobs, no thin lines)."""
    f = size / 64.0
    cy, cx = rng.uniform(6, 58, 2) * f
    s = rng.uniform(3.5, 11.0) * f
    shape = rng.choice(["rect", "triangle", "ring", "cross", "zigzag", "star"])

    def draw(d: ImageDraw.ImageDraw) -> None:
        if shape == "rect":
            w, h = s * rng.uniform(0.6, 1.4), s * rng.uniform(0.6, 1.4)
            angle = rng.uniform(0, np.pi)
            corners = [(-w, -h), (w, -h), (w, h), (-w, h)]
            pts = [(cx + x * np.cos(angle) - y * np.sin(angle), cy + x * np.sin(angle) + y * np.cos(angle))
                   for x, y in corners]
            d.polygon(pts, fill=255)
        elif shape == "triangle":
            a0 = rng.uniform(0, 2 * np.pi)
            pts = [(cx + s * np.cos(a0 + k * 2.094), cy + s * np.sin(a0 + k * 2.094)) for k in range(3)]
            d.polygon(pts, fill=255)
        elif shape == "ring":
            width = max(3, int(round(s * rng.uniform(0.3, 0.5))))
            d.ellipse((cx - s, cy - s, cx + s, cy + s), outline=255, width=width)
        elif shape == "cross":
            width = max(3, int(round(s * rng.uniform(0.35, 0.6))))
            d.line([(cx - s, cy), (cx + s, cy)], fill=255, width=width)
            d.line([(cx, cy - s), (cx, cy + s)], fill=255, width=width)
        elif shape == "zigzag":
            width = max(3, int(round(s * rng.uniform(0.3, 0.5))))
            angle = rng.uniform(0, np.pi)
            pts = []
            for k in range(5):
                t = (k / 4.0 - 0.5) * 2.2 * s
                off = (s * 0.4) * (1 if k % 2 else -1)
                pts.append((cx + t * np.cos(angle) - off * np.sin(angle), cy + t * np.sin(angle) + off * np.cos(angle)))
            d.line(pts, fill=255, width=width)
        else:  # star
            a0 = rng.uniform(0, 2 * np.pi)
            pts = []
            for k in range(10):
                r = s if k % 2 == 0 else s * 0.45
                pts.append((cx + r * np.cos(a0 + k * np.pi / 5), cy + r * np.sin(a0 + k * np.pi / 5)))
            d.polygon(pts, fill=255)

    return _draw_mask(size, draw)


def _add_marks(rng: Rng, image: np.ndarray, count: int) -> tuple[np.ndarray, np.ndarray]:
    """Paint ``count`` generic marks (flat colour with a light gradient) onto a float image."""
    size = image.shape[0]
    union = np.zeros((size, size), dtype=bool)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    for _ in range(count):
        mask = _mark_shape(rng, size)
        colour = _mark_colour(rng)
        gradient = ((yy - 0.5) * rng.uniform(-30, 30) + (xx - 0.5) * rng.uniform(-30, 30))[..., None]
        paint = colour + gradient + rng.normal(0, 3.0, (size, size, 3))
        image = np.where(mask[..., None], np.clip(paint, 45, 222), image)
        union |= mask
    return image, union


# ------------------------------------------------------------------------------------- public generators


def normal_image(
    kind: str, seed: int, index: int, size: int = 64, background: str = "plain", split: str = "train"
) -> tuple[np.ndarray, np.ndarray | None]:
    """One normal image of a kind: (HxWx3 uint8 RGB, object mask or None for textures).

    The image depends only on (kind, seed, split, index, size, background).
    """
    _check(kind, background, size)
    rng = np.random.default_rng(derive_seed("toy", kind, background, seed, split, index, size))
    if kind == "object":
        image, obj = _object_normal(rng, size, background)
        return _muted(image), obj
    return _muted(_texture_normal(rng, size)), None


def defect_image(
    kind: str, defect: str, seed: int, index: int, size: int = 64, background: str = "plain"
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """One anomalous image: (RGB uint8 image, defect mask, object mask or None).

    The defect lies on the object for ``object`` (inside its silhouette), anywhere for ``texture``.
    """
    if defect not in DEFECTS:
        raise InputError(f"unknown toy defect {defect!r} (choose from {', '.join(DEFECTS)})")
    image, obj = normal_image(kind, seed, index, size, background, split=f"test-{defect}")
    rng = np.random.default_rng(derive_seed("toy-defect", kind, background, seed, defect, index, size))
    region = obj if obj is not None else np.ones(image.shape[:2], dtype=bool)
    min_area = max(4, int(6 * (size / 64.0) ** 2))
    for _ in range(50):
        mask = _defect_shape(rng, size, defect, region)
        if mask.sum() >= min_area:
            break
    return _paint_defect(rng, image, mask, defect), mask, obj


def part_canvas(seed: int, index: int, size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """A part-domain image: neutral grey (128) with 1-4 generic marks; returns (RGB uint8, marks mask)."""
    rng = np.random.default_rng(derive_seed("toy-part", seed, index, size))
    canvas = np.full((size, size, 3), float(GREY), dtype=np.float32)
    image, union = _add_marks(rng, canvas, int(rng.integers(1, 5)))
    return np.round(image).astype(np.uint8), union


def marked_image(kind: str, seed: int, index: int, size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """A normal image carrying 1-2 generic (non-defect) marks; returns (RGB uint8, marks mask)."""
    base, _ = normal_image(kind, seed, index, size, split="marked")
    rng = np.random.default_rng(derive_seed("toy-marked", kind, seed, index, size))
    image, union = _add_marks(rng, base.astype(np.float32), int(rng.integers(1, 3)))
    return np.round(image).astype(np.uint8), union


def iter_domain(domain: str, seed: int, start: int = 0, size: int = 64) -> Iterator[np.ndarray]:
    """An endless stream of pretraining images of one domain (a key of :data:`PROMPTS`)."""
    index = start
    while True:
        if domain in KINDS:
            yield normal_image(domain, seed, index, size, split="pretrain")[0]
        elif domain == "part":
            yield part_canvas(seed, index, size)[0]
        elif domain.endswith("_marked"):
            yield marked_image(domain.removesuffix("_marked"), seed, index, size)[0]
        else:
            raise InputError(f"unknown toy domain {domain!r} (choose from {', '.join(PROMPTS)})")
        index += 1


def _check(kind: str, background: str, size: int) -> None:
    if kind not in KINDS:
        raise InputError(f"unknown toy kind {kind!r} (choose from {', '.join(KINDS)})")
    if background not in BACKGROUNDS:
        raise InputError(f"unknown toy background {background!r} (choose from {', '.join(BACKGROUNDS)})")
    if size < 32:
        raise InputError(f"toy images need at least 32 px, got {size}")


# ------------------------------------------------------------------------------------------ writer


def make_category(
    out_root: str | Path,
    kind: str = "object",
    seed: int = 0,
    size: int = 64,
    background: str = "plain",
    *,
    n_train: int = 60,
    n_test_good: int = 12,
    n_per_defect: int = 10,
    defects: tuple[str, ...] = DEFECTS,
    name: str | None = None,
    progress: ProgressCallback | None = None,
) -> Path:
    """Write one toy category in the MVTec AD layout and return its folder.

    Layout: ``train/good``, ``test/good``, ``test/<defect>``, ``ground_truth/<defect>/<stem>_mask.png``,
    for objects ``object_masks/<split>/<stem>.png`` (0/255) too, and the marker ``toy.json``.

    Args:
        out_root (`str | Path`): the dataset root; the category folder is ``out_root/<name>``.
        kind (`str`): ``object`` or ``texture``.
        seed (`int`): data seed; the same arguments write the same bytes.
        size (`int`): image side in pixels (64 by default; geometry scales with it).
        background (`str`): ``plain`` or ``textured`` (objects only: a noisy, structured background).
        n_train, n_test_good, n_per_defect: image counts.
        defects: the defect types to write.
        name (`str`, *optional*): the category folder name (default: the kind).
        progress: optional progress callback.
    """
    _check(kind, background, size)
    if kind == "texture" and background != "plain":
        raise InputError("the textured background is an option of the object kind only")
    unknown = [d for d in defects if d not in DEFECTS]
    if unknown:
        raise InputError(f"unknown toy defect(s) {', '.join(unknown)} (choose from {', '.join(DEFECTS)})")
    folder = Path(out_root) / (name or kind)
    total = n_train + n_test_good + n_per_defect * len(defects)
    done = 0

    def write(split: str, stem: str, image: np.ndarray, obj: np.ndarray | None) -> None:
        nonlocal done
        save_png_atomic(folder / split / f"{stem}.png", image)
        if obj is not None:
            save_png_atomic(folder / "object_masks" / split / f"{stem}.png", mask_to_png_array(obj))
        done += 1
        report(progress, "toy data", done, total)

    for i in range(n_train):
        image, obj = normal_image(kind, seed, i, size, background, split="train")
        write("train/good", f"{i:03d}", image, obj)
    for i in range(n_test_good):
        image, obj = normal_image(kind, seed, i, size, background, split="test-good")
        write("test/good", f"{i:03d}", image, obj)
    for defect in defects:
        for i in range(n_per_defect):
            image, mask, obj = defect_image(kind, defect, seed, i, size, background)
            write(f"test/{defect}", f"{i:03d}", image, obj)
            save_png_atomic(folder / "ground_truth" / defect / f"{i:03d}_mask.png", mask_to_png_array(mask))
    marker = {"toy": True, "kind": kind, "seed": seed, "size": size, "background": background,
              "defects": list(defects), "rules": {d: _RULES[d] for d in defects}}
    write_json_atomic(folder / "toy.json", marker)
    logger.info("wrote toy category %s (%d images)", folder, total)
    return folder


_RULES = {
    "stain": "R - G > 75 and B - G > 40 and R >= 150",
    "scratch": "min(R, G, B) >= 226",
    "hole": "max(R, G, B) <= 49",
}
