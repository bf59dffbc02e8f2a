"""Masks from part images: known shapes drawn on grey are recovered; empty / full-frame / off-object are rejected.

The expectation is the geometry we drew, independent of the implementation. Bars, at 64 px: IoU >= 0.8 with Otsu
and >= 0.7 with the fixed 0.12 threshold for discs and blobs of radius 7-12 px; for 3-px lines IoU >= 0.45 and
>= 95% of the line covered. Why the fixed threshold scores lower: the Gaussian (sigma 1 px) spreads a high-contrast
edge, and a low fixed threshold sits about one pixel outside it, so small shapes grow by ~1 px all round (Otsu sits
near half the contrast, on the edge). At real resolutions (256-512 px) that pixel is negligible.
"""

from __future__ import annotations

import numpy as np
import pytest

from anogen.config import MaskConfig
from anogen.masks import distance_from_grey, make_mask, otsu_threshold

SIZE = 64


def grey(size: int = SIZE) -> np.ndarray:
    return np.full((size, size, 3), 128, dtype=np.uint8)


def disc(size: int, cy: float, cx: float, r: float) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


def paint(img: np.ndarray, shape: np.ndarray, color: tuple[int, int, int]) -> np.ndarray:
    out = img.copy()
    out[shape] = color
    return out


def add_noise(img: np.ndarray, std: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.clip(img.astype(np.float64) + rng.normal(0, std, img.shape), 0, 255).round().astype(np.uint8)


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum()) / float((a | b).sum())


@pytest.mark.parametrize("threshold", [0.12, "otsu"])
def test_disc_recovered(threshold):
    shape = disc(SIZE, 30, 34, 9)
    result = make_mask(paint(grey(), shape, (60, 40, 30)), MaskConfig(threshold=threshold))
    assert result.accepted
    assert result.mask.dtype == np.uint8 and set(np.unique(result.mask)) <= {0, 255}
    assert iou(result.mask > 0, shape) >= (0.8 if threshold == "otsu" else 0.7)
    assert result.area == pytest.approx((result.mask > 0).mean())


@pytest.mark.parametrize("threshold", [0.12, "otsu"])
def test_several_blobs_with_noise(threshold):
    shape = disc(SIZE, 12, 12, 7) | disc(SIZE, 46, 18, 7) | disc(SIZE, 30, 50, 9)
    img = add_noise(paint(grey(), shape, (200, 210, 190)), std=6, seed=1)
    result = make_mask(img, MaskConfig(threshold=threshold))
    assert result.accepted
    got = result.mask > 0
    assert iou(got, shape) >= (0.8 if threshold == "otsu" else 0.7)
    from scipy import ndimage

    assert ndimage.label(got)[1] == 3  # three blobs, no noise speckle survives


def test_thin_line():
    shape = np.zeros((SIZE, SIZE), dtype=bool)
    shape[31:34, 8:56] = True  # 3 px wide horizontal scratch
    diag = np.eye(SIZE, dtype=bool)
    diag = diag | np.roll(diag, 1, axis=1) | np.roll(diag, -1, axis=1)
    diag[:10] = False
    diag[-10:] = False
    shape = shape | diag
    img = add_noise(paint(grey(), shape, (40, 40, 40)), std=4, seed=2)
    result = make_mask(img, MaskConfig())
    assert result.accepted
    got = result.mask > 0
    assert iou(got, shape) >= 0.45
    assert (got & shape).sum() >= 0.95 * shape.sum()


def test_holes_filled_and_small_components_dropped():
    ring = disc(SIZE, 32, 32, 12) & ~disc(SIZE, 32, 32, 6)
    speck = disc(SIZE, 5, 56, 1.5)
    img = paint(grey(), ring | speck, (30, 30, 30))
    from scipy import ndimage

    kept = make_mask(img, MaskConfig(min_area=1)).mask > 0
    labels, count = ndimage.label(kept)
    assert count == 2 and kept[5, 56]
    speck_size = int((labels == labels[5, 56]).sum())
    got = make_mask(img, MaskConfig(min_area=speck_size + 1)).mask > 0
    assert got[32, 32]  # the hole is filled
    assert not got[5, 56]  # the speck is gone, the ring stays
    assert iou(got, disc(SIZE, 32, 32, 12)) >= 0.7


def test_empty_part_rejected():
    img = add_noise(grey(), std=3, seed=3)
    for threshold in (0.12, "otsu"):
        result = make_mask(img, MaskConfig(threshold=threshold))
        assert result.reason == "empty_mask"
        assert result.area == 0.0
        assert not result.mask.any()


def test_full_frame_rejected():
    img = add_noise(np.full((SIZE, SIZE, 3), 20, dtype=np.uint8), std=3, seed=4)
    result = make_mask(img, MaskConfig())
    assert result.reason == "mask_too_large"
    assert result.area > 0.5


def test_max_area_fraction_boundary():
    shape = np.zeros((SIZE, SIZE), dtype=bool)
    shape[:, : SIZE // 2 - 4] = True  # ~44% of the frame
    img = paint(grey(), shape, (10, 10, 10))
    assert make_mask(img, MaskConfig(max_area_fraction=0.5)).accepted
    assert make_mask(img, MaskConfig(max_area_fraction=0.3)).reason == "mask_too_large"


def test_resized_nearest_to_output_size():
    shape = disc(SIZE, 32, 32, 10)
    result = make_mask(paint(grey(), shape, (0, 0, 0)), MaskConfig(), size=(128, 128))
    assert result.mask.shape == (128, 128)
    assert set(np.unique(result.mask)) == {0, 255}  # never anti-aliased
    big = np.kron(shape, np.ones((2, 2), dtype=bool))
    assert iou(result.mask > 0, big) >= 0.7


def test_off_object():
    obj = np.zeros((SIZE, SIZE), dtype=bool)
    obj[16:48, 16:48] = True
    on = paint(grey(), disc(SIZE, 32, 32, 6), (0, 0, 0))
    off = paint(grey(), disc(SIZE, 6, 6, 5), (0, 0, 0))
    cfg = MaskConfig(on_object_only=True, min_on_object=0.5)
    assert make_mask(on, cfg, object_mask=obj).accepted
    assert make_mask(off, cfg, object_mask=obj).reason == "off_object"
    # without the flag, or without an object mask, position does not matter
    assert make_mask(off, MaskConfig(), object_mask=obj).accepted
    assert make_mask(off, cfg).accepted


def test_distance_scale():
    img = np.array([[[128, 128, 128], [0, 128, 128], [255, 255, 255]]], dtype=np.uint8)
    d = distance_from_grey(img)
    assert d[0, 0] == pytest.approx(0.5 / 127.5)
    assert d[0, 1] == pytest.approx(1.0)
    assert d[0, 2] == pytest.approx(1.0)


def test_otsu_splits_two_modes():
    rng = np.random.default_rng(0)
    values = np.concatenate([rng.normal(0.1, 0.02, 5000), rng.normal(0.6, 0.05, 1000)])
    t = otsu_threshold(values)
    assert 0.15 < t < 0.45
    assert (values > t).mean() == pytest.approx(1000 / 6000, abs=0.01)

    # brute-force reference: no cut has a (clearly) larger between-class variance than Otsu's
    def score(c: float) -> float:
        lo, hi = values[values <= c], values[values > c]
        return (lo.size / values.size) * (hi.size / values.size) * (lo.mean() - hi.mean()) ** 2

    best = max(score(c) for c in np.linspace(0.05, 0.7, 131))
    assert score(t) >= best * 0.999
