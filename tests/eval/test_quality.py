"""Quality figures on inputs whose answer is known."""

from __future__ import annotations

import numpy as np
import pytest

from anogen.eval import quality


def _square(y: int, x: int, size: int = 8, side: int = 2) -> np.ndarray:
    mask = np.zeros((size, size), dtype=bool)
    mask[y : y + side, x : x + side] = True
    return mask


def _paint(mask: np.ndarray) -> np.ndarray:
    image = np.full(mask.shape + (3,), 100, dtype=np.uint8)
    image[mask] = (255, 0, 255)
    return image


def _magenta(image: np.ndarray, defect: str) -> np.ndarray:
    assert defect == "stain"
    return (image[..., 0] == 255) & (image[..., 1] == 0)


def test_alignment_and_chance_by_hand() -> None:
    masks = [_square(0, 0), _square(0, 1), _square(5, 5)]
    pairs = [(_paint(m), m) for m in masks]
    result = quality.alignment(pairs, "stain", _magenta, seed=0)
    assert result["iou"] == 1.0 and result["n"] == 3
    # The chance level pairs each mask with another sample's image in a cycle. Pairwise IoUs: squares at
    # (0,0) and (0,1) share 2 of 6 pixels (1/3); the square at (5,5) overlaps neither (0). Any 3-cycle visits
    # each unordered pair once: (1/3 + 0 + 0) / 3.
    assert result["chance_iou"] == pytest.approx(1 / 9)
    # A mask that misses half its defect: IoU 2/4.
    half = _square(0, 0)
    half[1] = False
    assert quality.alignment([(_paint(_square(0, 0)), half)], "stain", _magenta)["iou"] == pytest.approx(0.5)


def test_diversity_and_memorisation_by_hand() -> None:
    black = np.zeros((4, 4, 3), dtype=np.uint8)
    white = np.full((4, 4, 3), 255, dtype=np.uint8)
    grey = np.full((4, 4, 3), 51, dtype=np.uint8)  # 0.2 of the range
    assert quality.diversity([black, black]) == pytest.approx(0.0, abs=1e-7)
    # Pairs: black-white 1.0, black-grey 0.2, white-grey 0.8 -> mean 2/3.
    assert quality.diversity([black, white, grey], size=4) == pytest.approx(2 / 3)
    assert quality.diversity([black]) is None
    near = black.copy()
    near[0, 0] = 3  # RMSE ~ sqrt(3 * (3/255)^2 / 48) ~ 0.003: a near-copy
    result = quality.memorisation([near, grey], [black, white], names=["a", "b"], size=4)
    assert result["near_copies"] == 1 and result["near_copy_names"] == ["a"]
    assert result["median"] == pytest.approx((0.2 + np.sqrt(3 * (3 / 255) ** 2 / 48)) / 2)
    assert result["threshold"] == quality.NEAR_COPY_RMSE


def test_rejections() -> None:
    rows = [
        {"accepted": True},
        {"accepted": False, "reason": "empty_mask"},
        {"accepted": False, "reason": "off_object"},
        {"accepted": True},
    ]
    assert quality.rejections(rows) == {
        "attempts": 4, "rejected_share": 0.5, "reasons": {"empty_mask": 1, "off_object": 1}
    }
    assert quality.rejections([])["rejected_share"] is None
