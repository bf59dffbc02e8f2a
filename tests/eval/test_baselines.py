"""The classical generators' masks match their pixels exactly."""

from __future__ import annotations

import numpy as np
import pytest

from anogen.eval import baselines


def _normal(seed: int, size: int = 48) -> np.ndarray:
    rng = np.random.default_rng(seed)
    # A smooth gradient plus mild noise: neighbouring pixels are similar, so a pasted patch is not trivially
    # different everywhere and the exact-mask logic is exercised.
    yy, xx = np.mgrid[0:size, 0:size]
    base = np.stack([xx * 4, yy * 4, (xx + yy) * 2], axis=-1) % 256
    return np.clip(base + rng.integers(-3, 4, size=base.shape), 0, 255).astype(np.uint8)


def _check_exact(original: np.ndarray, result: np.ndarray, mask: np.ndarray) -> None:
    assert result.dtype == np.uint8 and result.shape == original.shape
    assert mask.dtype == bool and mask.shape == original.shape[:2]
    assert mask.any()
    changed = np.any(result != original, axis=-1)
    np.testing.assert_array_equal(result[~mask], original[~mask])  # outside: untouched
    assert changed[mask].all()  # inside: every masked pixel differs
    np.testing.assert_array_equal(changed, mask)


@pytest.mark.parametrize("seed", range(6))
def test_perlin_mask_matches_pixels(seed: int) -> None:
    image, other = _normal(seed), _normal(seed + 100)
    rng = np.random.default_rng(seed)
    result, mask = baselines.perlin_anomaly(image, rng, texture_source=other)
    _check_exact(image, result, mask)
    assert mask.mean() < 0.9  # a blob, not the whole image


@pytest.mark.parametrize("seed", range(6))
def test_cutpaste_mask_matches_pixels(seed: int) -> None:
    image = _normal(seed)
    result, mask = baselines.cutpaste_anomaly(image, np.random.default_rng(seed))
    _check_exact(image, result, mask)
    # The changed pixels lie inside one rectangle whose area respects the drawn ratio's upper bound.
    ys, xs = np.nonzero(mask)
    box = (ys.max() - ys.min() + 1) * (xs.max() - xs.min() + 1)
    assert box <= 0.15 * image.shape[0] * image.shape[1] + 2 * image.shape[0]


def test_cutpaste_on_flat_image_leaves_no_false_mask() -> None:
    # On a constant image a pasted patch equals what it covers unless the jitter changes it: the mask must
    # shrink to exactly the pixels the jitter changed, never claim unchanged ones.
    image = np.full((32, 32, 3), 128, dtype=np.uint8)
    for seed in range(5):
        result, mask = baselines.cutpaste_anomaly(image, np.random.default_rng(seed))
        np.testing.assert_array_equal(np.any(result != image, axis=-1), mask)


def test_generators_are_deterministic_by_seed() -> None:
    image = _normal(3)
    a = baselines.make_anomaly("perlin", image, np.random.default_rng(7), [_normal(4)])
    b = baselines.make_anomaly("perlin", image, np.random.default_rng(7), [_normal(4)])
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    with pytest.raises(ValueError, match="unknown"):
        baselines.make_anomaly("draem", image, np.random.default_rng(0))


def test_perlin_noise_range_and_scale() -> None:
    noise = baselines.perlin_noise((64, 64), (4, 4), np.random.default_rng(0))
    assert noise.shape == (64, 64)
    assert -1.01 <= noise.min() < 0 < noise.max() <= 1.01
    # Lattice points are zeros of gradient noise.
    assert abs(noise[0, 0]) < 1e-12 and abs(noise[16, 16]) < 1e-12
