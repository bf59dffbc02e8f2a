"""Object masks: a background colour model taken from the image border (k-means over the border strip,
Mahalanobis distance, a fixed or Otsu threshold, opening/closing, holes, largest component), and the
background image I_b that BCM takes."""

from __future__ import annotations

import numpy as np
from PIL import Image

from anogen.errors import InputError
from anogen.priors.params import PriorParams


def estimate_object_mask(image: np.ndarray | Image.Image, params: PriorParams | None = None) -> np.ndarray:
    """Segment the object from its background with a colour model of the image border.

    Args:
        image (`np.ndarray | PIL.Image.Image`): an RGB image, uint8 ``(H, W, 3)`` or ``(H, W)`` grey.
        params (`PriorParams`, *optional*): extraction parameters (defaults when ``None``).

    Returns:
        `np.ndarray`: boolean ``(H, W)`` object mask. All False when no object stands out from the border
        (a texture, or an object of the background's colour); :func:`build_prior` then falls back.
    """
    from scipy import ndimage

    params = params or PriorParams()
    rgb = _as_rgb_array(image)
    height, width = rgb.shape[:2]
    work = _downscale(rgb, params.work_size)
    h, w = work.shape[:2]
    pixels = work.astype(np.float64) / 255.0
    if params.median > 1:
        # A median filter removes sensor noise and fine background texture but keeps edges where they are
        # (a Gaussian moves a low threshold's edge outwards).
        pixels = ndimage.median_filter(pixels, size=(params.median, params.median, 1), mode="nearest")
    if params.smooth > 0:
        pixels = ndimage.gaussian_filter(pixels, sigma=(params.smooth, params.smooth, 0), mode="nearest")

    band = max(2, int(round(params.border * min(h, w))))
    sides = np.zeros((4, h, w), dtype=bool)
    sides[0, :band, :] = sides[1, -band:, :] = sides[2, :, :band] = sides[3, :, -band:] = True
    ring = sides.any(axis=0)
    distance = _background_distance(pixels, pixels[ring], sides[:, ring], params)

    radius = max(1, int(round(params.morph_radius * min(h, w))))
    binary = _segment(distance, params, radius)
    if params.refine and binary.any() and not binary.all():
        # Second pass: a background model from every pixel well away from the first mask, not only the border,
        # so that background patches whose colour the border lacks stop being glued to the object.
        outside = ~_dilate(binary, 2 * radius)
        if outside.mean() >= 0.05:
            samples = pixels[outside]
            stride = max(1, len(samples) // 20000)
            distance = _background_distance(pixels, samples[::stride], None, params)
            refined = _segment(distance, params, radius)
            if refined.any():
                binary = refined

    if (h, w) != (height, width):
        # Bilinear upsampling of the 0/1 map then a 0.5 cut gives smooth edges instead of blocks.
        up = Image.fromarray(binary.astype(np.float32), mode="F").resize((width, height), Image.BILINEAR)
        binary = np.asarray(up) >= 0.5
    return binary


def _segment(distance: np.ndarray, params: PriorParams, radius: int) -> np.ndarray:
    """Distance map -> cleaned binary object mask (threshold, edge level, opening, closing, holes, largest)."""
    from scipy import ndimage

    threshold = params.threshold
    if threshold == "otsu":
        threshold = min(max(_otsu(distance), params.min_threshold), params.max_threshold)
    binary = distance > threshold
    if params.edge_level > 0 and binary.any():
        # A threshold near the noise floor cuts a blurred edge close to the background side, which grows the
        # mask by part of the blur width; cutting at a share of the object's typical distance (0.5 = halfway
        # between background and object) puts the edge where the blur is centred.
        core = _erode(_largest_component(binary), radius)
        if core.any():
            threshold = max(float(threshold), params.edge_level * float(np.median(distance[core])))
            binary = distance > threshold
    # Opening removes specks, closing bridges thin cuts (a scratch across the rim) so that holes can be filled.
    binary = _dilate(_erode(binary, radius), radius)
    binary = _erode(_dilate(binary, radius), radius)
    if params.fill_holes:
        binary = ndimage.binary_fill_holes(binary)
    if params.largest_component:
        binary = _largest_component(binary)
    return binary


def _as_rgb_array(image: np.ndarray | Image.Image) -> np.ndarray:
    if isinstance(image, Image.Image):
        image = np.asarray(image.convert("RGB"))
    arr = np.asarray(image)
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=-1)
    if arr.ndim != 3 or arr.shape[-1] < 3:
        raise InputError(f"expected an (H, W, 3) or (H, W) image, got shape {arr.shape}")
    arr = arr[..., :3]
    if arr.dtype != np.uint8:
        arr = np.clip(arr, 0, 255).astype(np.uint8)
    return arr


def _downscale(rgb: np.ndarray, work_size: int) -> np.ndarray:
    height, width = rgb.shape[:2]
    long_side = max(height, width)
    if work_size <= 0 or long_side <= work_size:
        return rgb
    scale = work_size / long_side
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return np.asarray(Image.fromarray(rgb).resize(size, Image.BOX))


def _background_distance(
    pixels: np.ndarray, border: np.ndarray, border_sides: np.ndarray | None, params: PriorParams
) -> np.ndarray:
    """Per-pixel Mahalanobis distance to the nearest background colour cluster, in standard deviations.

    ``border_sides`` (4, n) says which image side (top, bottom, left, right) each border pixel lies on.
    A cluster is background if it holds at least ``min_cluster_share`` of the border and appears on at least
    two sides: an object that touches one edge forms a cluster confined to that side, which is dropped.
    """
    centres, labels = _kmeans(border, params.clusters)
    floor = params.noise_floor**2 * np.eye(3)
    flat = pixels.reshape(-1, 3)
    best = np.full(flat.shape[0], np.inf)
    shares = np.bincount(labels, minlength=len(centres)) / max(1, len(labels))
    keep = []
    for k in range(len(centres)):
        if border_sides is None:  # samples from the whole background (second pass): no side rule
            on_sides = 4
        else:
            on_sides = sum((labels[side] == k).mean() >= 0.1 for side in border_sides if side.any())
        if shares[k] >= params.min_cluster_share and (on_sides >= 2 or shares[k] >= 0.5):
            keep.append(k)
    if not keep:  # no cluster qualifies: the border is too varied to say; trust the largest one
        keep = [int(np.argmax(shares))]
    for k in keep:
        members = border[labels == k]
        mean = members.mean(axis=0)
        cov = np.cov(members, rowvar=False) if len(members) > 3 else np.zeros((3, 3))
        inv = np.linalg.inv(cov + floor)
        diff = flat - mean
        dist2 = ((diff @ inv) * diff).sum(axis=1)
        np.minimum(best, dist2, out=best)
    return np.sqrt(np.maximum(best, 0.0)).reshape(pixels.shape[:2])


def _kmeans(points: np.ndarray, k: int, iterations: int = 12) -> tuple[np.ndarray, np.ndarray]:
    """Plain Lloyd k-means with centres initialised at luminance quantiles: deterministic, no RNG."""
    k = max(1, min(k, len(points)))
    luminance = points @ np.array([0.299, 0.587, 0.114])
    order = np.argsort(luminance, kind="stable")
    centres = points[order[((np.arange(k) + 0.5) / k * len(points)).astype(int)]].copy()
    labels = np.zeros(len(points), dtype=np.int64)
    for _ in range(iterations):
        dist = ((points[:, None, :] - centres[None, :, :]) ** 2).sum(axis=-1)
        labels = np.argmin(dist, axis=1)
        for j in range(k):
            members = points[labels == j]
            if len(members):
                centres[j] = members.mean(axis=0)
    return centres, labels


def _otsu(values: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold of a distance map (top 0.5% clipped, so a few extreme pixels do not flatten it)."""
    flat = values.ravel()
    top = float(np.quantile(flat, 0.995))
    if top <= 0:
        return 0.0
    hist, edges = np.histogram(np.clip(flat, 0, top), bins=bins, range=(0.0, top))
    centres = (edges[:-1] + edges[1:]) / 2
    weight0 = np.cumsum(hist)
    weight1 = weight0[-1] - weight0
    sum0 = np.cumsum(hist * centres)
    mean0 = sum0 / np.maximum(weight0, 1)
    mean1 = (sum0[-1] - sum0) / np.maximum(weight1, 1)
    between = weight0 * weight1 * (mean0 - mean1) ** 2
    return float(edges[int(np.argmax(between)) + 1])


def _erode(binary: np.ndarray, radius: float) -> np.ndarray:
    """Erosion by a disk of ``radius`` through the distance transform: O(pixels) whatever the radius.

    Pixels outside the array count as unknown, not background, so an object touching the image edge is not
    eaten away from that edge.
    """
    from scipy import ndimage

    if binary.all() or not binary.any():
        return binary.copy()
    return ndimage.distance_transform_edt(binary) > radius


def _dilate(binary: np.ndarray, radius: float) -> np.ndarray:
    """Dilation by a disk of ``radius`` (x^2 + y^2 <= r^2) through the distance transform."""
    from scipy import ndimage

    if binary.all() or not binary.any():
        return binary.copy()
    return ndimage.distance_transform_edt(~binary) <= radius


def _largest_component(binary: np.ndarray) -> np.ndarray:
    from scipy import ndimage

    labels, count = ndimage.label(binary)
    if count <= 1:
        return binary
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    return labels == int(np.argmax(sizes))


def background_image(image: np.ndarray, object_mask: np.ndarray) -> np.ndarray:
    """I_b: the image with the object blacked out (uint8 ``(H, W, 3)``)."""
    rgb = _as_rgb_array(image)
    return np.where(object_mask[..., None], 0, rgb).astype(np.uint8)
