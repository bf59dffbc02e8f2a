"""Anomaly-detection metrics, written with numpy/scipy only.

Image level: AUROC, average precision (AP) and the best F1 over all thresholds (F1-max), from one score per image.
Pixel level: the same three over every pixel of every test image, plus AU-PRO (the area under the per-region
overlap curve up to a false-positive rate of 0.3, divided by 0.3), as in the MVTec AD benchmark.

Definitions follow scikit-learn where it has one (ties between scores are one threshold, never split), so the
tests can compare against it; AU-PRO has no scikit-learn counterpart and is checked against hand-computed cases.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

DEFAULT_FPR_LIMIT = 0.3


@dataclass(frozen=True)
class DetectionMetrics:
    """Every figure ``anogen eval`` reports for one detector, all in [0, 1].

    The pixel figures are ``None`` when no test image has an anomalous pixel in a known mask (a data set
    without masks): they are undefined, not zero.
    """

    image_auroc: float
    image_ap: float
    image_f1_max: float
    pixel_auroc: float | None
    pixel_ap: float | None
    pixel_f1_max: float | None
    aupro: float | None

    def to_dict(self) -> dict[str, float | None]:
        return asdict(self)


def _check_binary(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(labels).reshape(-1).astype(bool)
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    if y.shape != s.shape:
        raise ValueError(f"labels ({y.size}) and scores ({s.size}) differ in size")
    if not np.isfinite(s).all():
        raise ValueError("scores hold NaN or infinite values")
    if y.all() or not y.any():
        raise ValueError("labels hold only one class; the metric is undefined")
    return y, s


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve: the probability that a random positive outscores a random negative.

    Computed as the Mann-Whitney U statistic with average ranks, so tied scores count one half, which is the
    trapezoidal ROC area scikit-learn reports.

    Args:
        labels (`np.ndarray`): truth, any shape; nonzero is anomalous.
        scores (`np.ndarray`): anomaly scores of the same size; higher is more anomalous.
    """
    from scipy.stats import rankdata

    y, s = _check_binary(labels, scores)
    ranks = rankdata(s, method="average")
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    u = ranks[y].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def _precision_recall_points(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Precision, recall and threshold at each distinct score, thresholds in decreasing order."""
    y, s = _check_binary(labels, scores)
    order = np.argsort(-s, kind="mergesort")
    s_sorted = s[order]
    y_sorted = y[order]
    # The last index of each run of equal scores: a threshold admits all tied samples at once.
    last = np.r_[np.flatnonzero(np.diff(s_sorted)), s_sorted.size - 1]
    tps = np.cumsum(y_sorted)[last].astype(np.float64)
    fps = (last + 1) - tps
    precision = tps / (tps + fps)
    recall = tps / tps[-1]
    return precision, recall, s_sorted[last]


def average_precision(labels: np.ndarray, scores: np.ndarray) -> float:
    """Average precision: sum over thresholds of (R_n - R_{n-1}) * P_n, the step-wise area of the PR curve.

    No interpolation (the definition scikit-learn's ``average_precision_score`` uses).
    """
    precision, recall, _ = _precision_recall_points(labels, scores)
    recall_steps = np.diff(np.r_[0.0, recall])
    return float(np.sum(recall_steps * precision))


def f1_max(labels: np.ndarray, scores: np.ndarray) -> tuple[float, float]:
    """The best F1 score over all thresholds ``score >= t``, and the threshold that reaches it.

    Returns:
        `(f1, threshold)`: where several thresholds reach the maximum, the highest of them.
    """
    precision, recall, thresholds = _precision_recall_points(labels, scores)
    denom = precision + recall
    f1 = np.where(denom > 0, 2.0 * precision * recall / np.where(denom > 0, denom, 1.0), 0.0)
    best = int(np.argmax(f1))
    return float(f1[best]), float(thresholds[best])


def pro_curve(
    anomaly_maps: np.ndarray, masks: np.ndarray, *, connectivity: int = 2
) -> tuple[np.ndarray, np.ndarray]:
    """The per-region-overlap curve: (FPR, PRO) at every distinct threshold, FPR increasing, from (0, 0).

    PRO at a threshold is the mean, over every connected region of every ground-truth mask, of the fraction of
    the region's pixels scored at or above the threshold; each region counts once whatever its size, so small
    defects weigh as much as large ones. FPR is the fraction of all normal pixels (every image, mask 0) at or
    above the threshold.

    Args:
        anomaly_maps (`np.ndarray` of shape `(N, H, W)`): pixel scores.
        masks (`np.ndarray` of shape `(N, H, W)`): truth, nonzero is anomalous.
        connectivity (`int`, defaults to 2): 2 joins diagonal neighbours into one region (8-connectivity, as the
            MVTec AD evaluation code does), 1 only edge neighbours.
    """
    from scipy import ndimage

    maps = np.asarray(anomaly_maps, dtype=np.float64)
    gt = np.asarray(masks).astype(bool)
    if maps.ndim == 2:
        maps, gt = maps[None], gt[None]
    if maps.shape != gt.shape or maps.ndim != 3:
        raise ValueError(f"anomaly maps {maps.shape} and masks {gt.shape} must both be (N, H, W)")
    if not np.isfinite(maps).all():
        raise ValueError("anomaly maps hold NaN or infinite values")
    structure = ndimage.generate_binary_structure(2, connectivity)

    # Each pixel carries its share of the curve: a normal pixel 1 / (#normal pixels) of FPR, an anomalous pixel
    # 1 / (#regions * its region's size) of PRO. Sorting by score and summing gives the exact curve.
    region_weight = np.zeros(gt.shape, dtype=np.float64)
    n_regions = 0
    for i in range(gt.shape[0]):
        labelled, count = ndimage.label(gt[i], structure=structure)
        if count == 0:
            continue
        sizes = np.bincount(labelled.ravel())
        sizes[0] = 1  # background; its weight is zeroed below
        weights = 1.0 / sizes[labelled]
        weights[labelled == 0] = 0.0
        region_weight[i] = weights
        n_regions += count
    n_normal = int((~gt).sum())
    if n_regions == 0 or n_normal == 0:
        raise ValueError("AU-PRO needs at least one anomalous and one normal pixel")

    scores = maps.ravel()
    pro_w = region_weight.ravel() / n_regions
    fpr_w = (~gt).ravel().astype(np.float64) / n_normal
    order = np.argsort(-scores, kind="mergesort")
    scores = scores[order]
    last = np.r_[np.flatnonzero(np.diff(scores)), scores.size - 1]
    fpr = np.cumsum(fpr_w[order])[last]
    pro = np.cumsum(pro_w[order])[last]
    return np.r_[0.0, fpr], np.r_[0.0, pro]


def aupro(
    anomaly_maps: np.ndarray, masks: np.ndarray, *, fpr_limit: float = DEFAULT_FPR_LIMIT, connectivity: int = 2
) -> float:
    """Area under the PRO curve from FPR 0 to ``fpr_limit``, divided by ``fpr_limit`` (so a perfect map scores 1).

    The curve is linear between its points (trapezoids); at ``fpr_limit`` it is interpolated between the points
    on either side.

    Args:
        anomaly_maps (`np.ndarray` of shape `(N, H, W)`): pixel scores.
        masks (`np.ndarray` of shape `(N, H, W)`): truth, nonzero is anomalous.
        fpr_limit (`float`, defaults to 0.3): upper integration limit on the false-positive rate.
        connectivity (`int`, defaults to 2): see :func:`pro_curve`.
    """
    if not 0.0 < fpr_limit <= 1.0:
        raise ValueError(f"fpr_limit must lie in (0, 1], got {fpr_limit}")
    fpr, pro = pro_curve(anomaly_maps, masks, connectivity=connectivity)
    # Rounding in the cumulative sums can leave the last FPR a hair under 1.
    fpr = np.minimum(fpr, 1.0)
    fpr[-1] = 1.0
    inside = fpr <= fpr_limit
    x = fpr[inside]
    y = pro[inside]
    if x[-1] < fpr_limit:
        nxt = int(np.flatnonzero(~inside)[0])
        x0, x1, y0, y1 = fpr[nxt - 1], fpr[nxt], pro[nxt - 1], pro[nxt]
        y_limit = y0 + (y1 - y0) * (fpr_limit - x0) / (x1 - x0)
        x = np.r_[x, fpr_limit]
        y = np.r_[y, y_limit]
    area = float(np.sum(np.diff(x) * (y[1:] + y[:-1]) / 2.0))
    return area / fpr_limit


def detection_metrics(
    image_labels: np.ndarray,
    image_scores: np.ndarray,
    pixel_masks: np.ndarray,
    anomaly_maps: np.ndarray,
    *,
    fpr_limit: float = DEFAULT_FPR_LIMIT,
) -> DetectionMetrics:
    """All seven figures of one detector on one test set.

    Args:
        image_labels (`np.ndarray` of shape `(N,)`): 1 for anomalous test images, 0 for good ones.
        image_scores (`np.ndarray` of shape `(N,)`): one anomaly score per image.
        pixel_masks (`np.ndarray` of shape `(M, H, W)`): truth masks of the images with known masks.
        anomaly_maps (`np.ndarray` of shape `(M, H, W)`): the detector's maps for those same images.
        fpr_limit (`float`, defaults to 0.3): AU-PRO's integration limit.
    """
    image = {
        "image_auroc": roc_auc(image_labels, image_scores),
        "image_ap": average_precision(image_labels, image_scores),
        "image_f1_max": f1_max(image_labels, image_scores)[0],
    }
    gt = np.asarray(pixel_masks).astype(bool)
    if not gt.any() or gt.all():
        return DetectionMetrics(**image, pixel_auroc=None, pixel_ap=None, pixel_f1_max=None, aupro=None)
    return DetectionMetrics(
        **image,
        pixel_auroc=roc_auc(pixel_masks, anomaly_maps),
        pixel_ap=average_precision(pixel_masks, anomaly_maps),
        pixel_f1_max=f1_max(pixel_masks, anomaly_maps)[0],
        aupro=aupro(anomaly_maps, pixel_masks, fpr_limit=fpr_limit),
    )
