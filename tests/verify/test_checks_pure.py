"""The checks as pure functions, on maps and masks of known geometry (no model, no torch)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from anogen.errors import InputError
from anogen.verify import CheckScores, VerifyConfig, alignment_score, background_score, reject_reason

SIDE = 64


def _disc(cy: float, cx: float, r: float) -> np.ndarray:
    yy, xx = np.mgrid[0:SIDE, 0:SIDE]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r**2


def _bump(cy: float, cx: float, sigma: float = 4.0, peak: float = 5.0) -> np.ndarray:
    """A smooth anomaly of height ``peak`` (normal units) on a flat normal level of 0.5."""
    yy, xx = np.mgrid[0:SIDE, 0:SIDE]
    return 0.5 + peak * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * sigma**2))


def test_alignment_is_one_for_a_mask_on_the_anomaly_and_below_chance_elsewhere():
    amap = _bump(20, 20)
    assert alignment_score(amap, _disc(20, 20, 4), floor=1.0, band=2) == pytest.approx(1.0)
    # The mask on a normal area while the anomaly is elsewhere: the anomaly's pixels outrank the mask's.
    assert alignment_score(amap, _disc(45, 45, 4), floor=1.0, band=2) < 0.5


def test_alignment_of_a_map_without_anomaly_is_exactly_chance():
    # Every value below the floor ties: no mask can align with an image the model finds normal.
    rng = np.random.default_rng(0)
    amap = rng.uniform(0.0, 0.99, (SIDE, SIDE))
    assert alignment_score(amap, _disc(30, 30, 5), floor=1.0, band=2) == 0.5
    # Without the floor the same noise aligns with some masks by chance (what the floor is there to prevent).
    scores = [alignment_score(amap, _disc(y, x, 3), floor=0.0, band=2) for y in (10, 30, 50) for x in (10, 30, 50)]
    assert max(scores) > 0.55


def test_alignment_falls_as_the_mask_slides_off_the_anomaly():
    amap = _bump(32, 32, sigma=3.0)
    scores = [alignment_score(amap, _disc(32, 32 + dx, 4), floor=1.0, band=1) for dx in (0, 3, 6, 10, 16)]
    assert scores == sorted(scores, reverse=True)
    assert scores[0] > 0.95 and scores[-1] <= 0.5


def test_alignment_of_an_empty_mask_is_nan_and_rejected():
    assert math.isnan(alignment_score(_bump(20, 20), np.zeros((SIDE, SIDE), bool)))
    assert reject_reason(CheckScores(alignment=float("nan"), background=0.0)) == "misaligned"


def test_background_is_the_peak_outside_the_dilated_mask():
    amap = _bump(20, 20, peak=3.0)
    # The anomaly inside the mask: outside the margin only the normal level (and the bump's faint tail) remains.
    assert background_score(amap, _disc(20, 20, 4), margin=12) == pytest.approx(0.5, abs=0.01)
    # A second anomaly far from the mask: its peak is the background score.
    amap2 = np.maximum(amap, _bump(50, 50, peak=2.0))
    assert background_score(amap2, _disc(20, 20, 4), margin=12) == pytest.approx(2.5, abs=0.01)


def test_checks_refuse_a_mask_of_another_size():
    with pytest.raises(InputError):
        alignment_score(np.zeros((8, 8)), np.zeros((9, 9), bool))


def test_reject_reason_follows_thresholds_order_and_mode():
    config = VerifyConfig(mode="reject", alignment_min=0.8, background_max=1.2, copy_min=1.5)
    assert reject_reason(CheckScores(0.9, 1.0, 3.0), config) is None
    assert reject_reason(CheckScores(0.7, 1.0, 3.0), config) == "misaligned"
    assert reject_reason(CheckScores(0.9, 1.3, 3.0), config) == "background"
    assert reject_reason(CheckScores(0.9, 1.0, 1.2), config) == "copy"
    assert reject_reason(CheckScores(0.9, 1.0, None), config) is None  # no shots: no copy check
    # Several failures: the method's core failure is named first.
    assert reject_reason(CheckScores(0.1, 9.0, 0.0), config) == "misaligned"
    # Thresholds are parameters: a looser one accepts what the default rejects.
    assert reject_reason(CheckScores(0.7, 1.0, 3.0), VerifyConfig(mode="reject", alignment_min=0.6)) is None
    for mode in ("score", "off"):
        assert reject_reason(CheckScores(0.1, 9.0, 0.0), VerifyConfig(mode=mode)) is None


def test_scores_serialise_nan_as_null():
    assert CheckScores(float("nan"), 0.5, None).to_dict() == {"alignment": None, "background": 0.5, "copy": None}


def test_config_rejects_bad_values():
    with pytest.raises(InputError, match="mode"):
        VerifyConfig(mode="maybe")  # type: ignore[arg-type]
    with pytest.raises(InputError, match="holdout"):
        VerifyConfig(holdout=1.0)
    assert VerifyConfig(feature_blocks=[1, 2]).feature_blocks == (1, 2)  # type: ignore[arg-type]
