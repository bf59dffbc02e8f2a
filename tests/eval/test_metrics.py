"""Each metric against an independent implementation: scikit-learn, or a case computed by hand."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score

from anogen.eval import metrics


def _cases() -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(1234)
    cases = []
    # Continuous scores, no ties.
    y = rng.random(200) < 0.3
    cases.append((y, rng.normal(size=200) + y * 0.8))
    # Heavy ties: scores quantised to 5 levels, shared by both classes.
    y = rng.random(300) < 0.5
    cases.append((y, np.round(rng.random(300) * 4) / 4 + y * 0.25))
    # Perfect separation and perfect inversion.
    y = np.array([0, 0, 0, 1, 1], dtype=bool)
    cases.append((y, np.array([0.1, 0.2, 0.3, 0.8, 0.9])))
    cases.append((y, np.array([0.9, 0.8, 0.7, 0.2, 0.1])))
    # A pixel-like case: a 2-D map flattened by the metric itself.
    y = np.zeros((3, 8, 8), dtype=bool)
    y[0, 2:5, 2:5] = True
    y[2, 6:, :3] = True
    cases.append((y, rng.random((3, 8, 8)) + y * 0.5))
    return cases


@pytest.mark.parametrize("case", range(5))
def test_auroc_and_ap_equal_scikit_learn(case: int) -> None:
    y, s = _cases()[case]
    assert metrics.roc_auc(y, s) == pytest.approx(roc_auc_score(y.ravel(), s.ravel()), abs=1e-12)
    assert metrics.average_precision(y, s) == pytest.approx(average_precision_score(y.ravel(), s.ravel()), abs=1e-12)


@pytest.mark.parametrize("case", range(5))
def test_f1_max_equals_scikit_learn_pr_curve(case: int) -> None:
    y, s = _cases()[case]
    precision, recall, thresholds = precision_recall_curve(y.ravel(), s.ravel())
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
    best, threshold = metrics.f1_max(y, s)
    assert best == pytest.approx(f1.max(), abs=1e-12)
    # The threshold we return reaches that F1 when applied as `score >= threshold`.
    pred = s.ravel() >= threshold
    tp = np.sum(pred & y.ravel())
    assert 2 * tp / (pred.sum() + y.sum()) == pytest.approx(best, abs=1e-12)
    assert threshold in thresholds


def test_one_class_is_an_error() -> None:
    with pytest.raises(ValueError, match="one class"):
        metrics.roc_auc(np.zeros(4), np.arange(4.0))


def _pro_case(r2_score: float) -> tuple[np.ndarray, np.ndarray]:
    """Two 3x4 images. Image 0 has two defect regions, image 1 none.

    Image 0 truth:      Image 0 scores (r = r2_score):   Image 1 scores:
        1 1 0 0             0.9 0.5 0   0                 0 0 0   0
        0 0 0 0             0   0   0   0                 0 0 0.8 0
        0 0 0 1             0   0   0   r                 0 0 0   0.6
    Region R1 = the two top-left pixels, region R2 = the bottom-right pixel; 24 - 3 = 21 normal pixels.
    """
    gt = np.zeros((2, 3, 4), dtype=bool)
    gt[0, 0, 0] = gt[0, 0, 1] = gt[0, 2, 3] = True
    maps = np.zeros((2, 3, 4))
    maps[0, 0, 0], maps[0, 0, 1], maps[0, 2, 3] = 0.9, 0.5, r2_score
    maps[1, 1, 2], maps[1, 2, 3] = 0.8, 0.6
    return maps, gt


def test_aupro_hand_computed_step_curve() -> None:
    # R2 scored 0.7. Walking the thresholds down (FPR in units of 1/21, PRO = mean of the two regions' overlaps):
    #   t=0.9: R1 half covered           -> (0,    (1/2 + 0)/2 = 0.25)
    #   t=0.8: one normal pixel          -> (1/21, 0.25)
    #   t=0.7: R2 covered                -> (1/21, (1/2 + 1)/2 = 0.75)
    #   t=0.6: one normal pixel          -> (2/21, 0.75)
    #   t=0.5: R1 fully covered          -> (2/21, 1.0)
    #   t=0:   the 19 other normals      -> (1,    1.0)
    # Area up to FPR 0.3: 0.25 * 1/21 + 0.75 * 1/21 + 1.0 * (0.3 - 2/21) = 0.3 - 1/21; divided by 0.3.
    maps, gt = _pro_case(0.7)
    expected = (0.3 - 1 / 21) / 0.3
    assert metrics.aupro(maps, gt) == pytest.approx(expected, abs=1e-12)
    fpr, pro = metrics.pro_curve(maps, gt)
    np.testing.assert_allclose(fpr, [0, 0, 1 / 21, 1 / 21, 2 / 21, 2 / 21, 1])
    np.testing.assert_allclose(pro, [0, 0.25, 0.25, 0.75, 0.75, 1.0, 1.0])


def test_aupro_hand_computed_with_interpolation() -> None:
    # R2 scored 0, tied with the 19 remaining normals, so the last segment is a slope:
    #   (0,0) (0,0.25) (1/21,0.25) (2/21,0.25) (2/21,0.5) (1,1)
    # Up to 2/21 the area is 0.25 * 2/21. From (2/21, 0.5) the line rises to (1, 1), slope 0.5 / (19/21) = 21/38,
    # so at FPR 0.3 (= 6.3/21) it reads 0.5 + (4.3/21) * 21/38 = 0.5 + 4.3/38; that trapezoid is
    # (4.3/21) * (0.5 + 0.5 + 4.3/38) / 2.
    maps, gt = _pro_case(0.0)
    area = 0.25 * 2 / 21 + (4.3 / 21) * (1.0 + 4.3 / 38) / 2
    assert metrics.aupro(maps, gt) == pytest.approx(area / 0.3, abs=1e-12)
    # With the whole curve (limit 1): 0.25*2/21 + trapezoid (2/21..1) of heights 0.5 and 1 = (19/21) * 0.75.
    assert metrics.aupro(maps, gt, fpr_limit=1.0) == pytest.approx(0.5 / 21 + 19 / 21 * 0.75, abs=1e-12)


def test_aupro_regions_are_eight_connected_and_weigh_equally() -> None:
    # A diagonal pair is one region with 8-connectivity (PRO after covering one pixel = 1/2) and two regions
    # with 4-connectivity (one fully covered region of two = 1/2 as well), so use three pixels: a diagonal
    # pair plus an isolated pixel, and cover only the isolated one.
    gt = np.zeros((1, 5, 5), dtype=bool)
    gt[0, 0, 0] = gt[0, 1, 1] = gt[0, 4, 4] = True
    maps = np.zeros((1, 5, 5))
    maps[0, 4, 4] = 1.0
    _, pro8 = metrics.pro_curve(maps, gt, connectivity=2)
    _, pro4 = metrics.pro_curve(maps, gt, connectivity=1)
    assert pro8[1] == pytest.approx(1 / 2)  # regions {diagonal pair}, {isolated}: (0 + 1) / 2
    assert pro4[1] == pytest.approx(1 / 3)  # three single-pixel regions: (0 + 0 + 1) / 3


def test_perfect_maps_score_one() -> None:
    gt = np.zeros((2, 6, 6), dtype=bool)
    gt[0, 1:3, 1:4] = True
    maps = gt.astype(float)
    result = metrics.detection_metrics(np.array([1, 0]), np.array([0.9, 0.1]), gt, maps)
    assert all(v == pytest.approx(1.0) for v in result.to_dict().values())
