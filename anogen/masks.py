"""Part image -> binary mask: the part branch paints the defect on neutral grey, so distance from grey is the mask.

The pipeline, in order (every number comes from :class:`anogen.config.MaskConfig`):

1. **distance**: per pixel, the largest absolute deviation of any RGB channel from neutral grey (127.5 in uint8,
   0 in [-1, 1]), divided by 127.5 — a value in [0, 1]: 0 is exactly grey, 1 is black or white in some channel;
2. **smoothing**: a Gaussian of ``blur_sigma`` pixels on the distance map (sampling noise is pixel-sized);
3. **threshold**: pixels whose smoothed distance is above ``threshold`` (a 0-1 value), or above Otsu's threshold
   of the distance histogram with ``threshold="otsu"`` (never below :data:`OTSU_MIN_THRESHOLD`);
4. **clean-up**: opening with a disc of ``open_radius`` (removes speckle), closing with a disc of ``close_radius``
   (joins fragments), connected components under ``min_area`` pixels dropped, holes filled;
5. **resize** nearest-neighbour to the output image's size, written 0/255 single channel.

A mask is then accepted or rejected: ``"empty_mask"`` (nothing left), ``"mask_too_large"`` (more than
``max_area_fraction`` of the image), ``"off_object"`` (with ``on_object_only`` and an object mask: less than
``min_on_object`` of the mask lies on the object). numpy and scipy only: no torch here.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from anogen.config import MaskConfig
from anogen.errors import InputError

GREY = 127.5
# Otsu always splits a histogram in two, even a part image that is grey plus sampling noise; below this distance
# (about 5 uint8 levels) a split is noise, so the threshold is clamped up to it and such an image gives an empty mask.
OTSU_MIN_THRESHOLD = 0.04
REASONS = ("empty_mask", "mask_too_large", "off_object")


@dataclass(frozen=True)
class MaskResult:
    """A mask and the verdict on it.

    Attributes:
        mask (`np.ndarray`): uint8 (H, W), values 0/255, at the requested output size.
        area (`float`): the mask's fraction of the image (0-1).
        reason (`str | None`): ``None`` if accepted, else one of :data:`REASONS`.
        threshold (`float`): the distance threshold actually used (Otsu's value when ``threshold="otsu"``).
    """

    mask: np.ndarray
    area: float
    reason: str | None
    threshold: float

    @property
    def accepted(self) -> bool:
        return self.reason is None


def distance_from_grey(part: np.ndarray) -> np.ndarray:
    """Per-pixel distance of an image from neutral grey on a 0-1 scale.

    Args:
        part (`np.ndarray`): uint8 (H, W, 3) or (H, W) image.

    Returns:
        float32 (H, W): ``max_c |part[..., c] - 127.5| / 127.5``.
    """
    arr = np.asarray(part)
    if arr.dtype != np.uint8:
        raise InputError(f"part image must be uint8, got {arr.dtype}")
    dev = np.abs(arr.astype(np.float32) - GREY) / GREY
    return dev.max(axis=-1) if dev.ndim == 3 else dev


def otsu_threshold(values: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold of values in [0, 1]: the cut maximising the between-class variance of the histogram.

    Returns the upper edge of the last bin of the lower class, so ``values > t`` is the upper class.
    """
    hist, edges = np.histogram(np.clip(values, 0.0, 1.0), bins=bins, range=(0.0, 1.0))
    hist = hist.astype(np.float64)
    total = hist.sum()
    if total == 0:
        return 1.0
    centers = (edges[:-1] + edges[1:]) / 2
    weight_low = np.cumsum(hist)  # pixels in bins 0..k
    weight_high = total - weight_low
    sum_low = np.cumsum(hist * centers)
    mean_low = np.divide(sum_low, weight_low, out=np.zeros_like(sum_low), where=weight_low > 0)
    mean_high = np.divide(sum_low[-1] - sum_low, weight_high, out=np.zeros_like(sum_low), where=weight_high > 0)
    between = weight_low * weight_high * (mean_low - mean_high) ** 2
    if not np.any(between > 0):
        # One occupied bin: nothing to split; put the cut above every value.
        return float(edges[int(np.nonzero(hist)[0][-1]) + 1])
    return float(edges[int(np.argmax(between)) + 1])


def _disc(radius: int) -> np.ndarray:
    yy, xx = np.mgrid[-radius : radius + 1, -radius : radius + 1]
    return (xx * xx + yy * yy) <= radius * radius


def _open_close(binary: np.ndarray, open_radius: int, close_radius: int) -> np.ndarray:
    from scipy import ndimage

    if open_radius > 0:
        binary = ndimage.binary_opening(binary, structure=_disc(open_radius))
    if close_radius > 0:
        # Pad first: scipy treats outside pixels as 0, so closing would eat into shapes touching the border.
        r = close_radius
        padded = np.pad(binary, r, mode="edge")
        binary = ndimage.binary_closing(padded, structure=_disc(r))[r:-r, r:-r]
    return binary


def _drop_small(binary: np.ndarray, min_area: int) -> np.ndarray:
    from scipy import ndimage

    if min_area <= 1 or not binary.any():
        return binary
    labels, count = ndimage.label(binary)
    sizes = np.bincount(labels.ravel(), minlength=count + 1)
    keep = sizes >= min_area
    keep[0] = False
    return keep[labels]


def binary_mask(part: np.ndarray, config: MaskConfig) -> tuple[np.ndarray, float]:
    """The boolean mask of a part image at the part image's own size, and the threshold used.

    Args:
        part (`np.ndarray`): uint8 (H, W, 3) part image.
        config (`MaskConfig`): thresholds and clean-up radii.
    """
    from scipy import ndimage

    distance = distance_from_grey(part)
    if config.blur_sigma > 0:
        distance = ndimage.gaussian_filter(distance, sigma=config.blur_sigma, mode="nearest")
    if config.threshold == "otsu":
        threshold = max(otsu_threshold(distance), OTSU_MIN_THRESHOLD)
    elif isinstance(config.threshold, (int, float)) and not isinstance(config.threshold, bool):
        threshold = float(config.threshold)
    else:
        raise InputError(f"mask threshold must be a number in [0, 1] or 'otsu', got {config.threshold!r}")
    binary = distance > threshold
    binary = _open_close(binary, config.open_radius, config.close_radius)
    binary = _drop_small(binary, config.min_area)
    binary = ndimage.binary_fill_holes(binary)
    return binary, threshold


def resize_nearest(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize a boolean (H, W) mask to ``size`` = (height, width) nearest-neighbour (never anti-aliased)."""
    if mask.shape == tuple(size):
        return mask
    img = Image.fromarray(np.where(mask, 255, 0).astype(np.uint8))
    return np.asarray(img.resize((size[1], size[0]), Image.NEAREST)) > 0


def judge(
    mask: np.ndarray,
    config: MaskConfig,
    *,
    object_mask: np.ndarray | None = None,
) -> str | None:
    """The reject reason of a boolean mask, or ``None`` when it is accepted.

    Args:
        mask (`np.ndarray`): boolean (H, W) mask at the output size.
        config (`MaskConfig`): ``max_area_fraction``, ``on_object_only``, ``min_on_object``.
        object_mask (`np.ndarray`, *optional*): boolean object mask (any size; resized nearest-neighbour). Only
            consulted when ``config.on_object_only``.
    """
    area = float(mask.mean())
    if area == 0.0:
        return "empty_mask"
    if area > config.max_area_fraction:
        return "mask_too_large"
    if config.on_object_only and object_mask is not None:
        obj = resize_nearest(np.asarray(object_mask) > 0, mask.shape)
        on_object = float((mask & obj).sum()) / float(mask.sum())
        if on_object < config.min_on_object:
            return "off_object"
    return None


def make_mask(
    part: np.ndarray,
    config: MaskConfig,
    *,
    size: tuple[int, int] | None = None,
    object_mask: np.ndarray | None = None,
) -> MaskResult:
    """Threshold a part image into a 0/255 mask at ``size`` and judge it.

    Args:
        part (`np.ndarray`): uint8 (H, W, 3) part image (the part branch's output).
        config (`MaskConfig`): the mask settings.
        size (`tuple[int, int]`, *optional*): output (height, width); defaults to the part image's size.
        object_mask (`np.ndarray`, *optional*): the object's mask, for the ``off_object`` check.

    Returns:
        MaskResult: the uint8 mask, its area fraction, the reject reason (or ``None``) and the threshold used.
    """
    binary, threshold = binary_mask(part, config)
    if size is not None:
        binary = resize_nearest(binary, size)
    reason = judge(binary, config, object_mask=object_mask)
    return MaskResult(
        mask=np.where(binary, 255, 0).astype(np.uint8),
        area=float(binary.mean()),
        reason=reason,
        threshold=threshold,
    )
