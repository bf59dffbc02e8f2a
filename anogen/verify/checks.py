"""The per-sample checks: pure functions of (whole image, mask, anomaly map, normal model / shots) -> numbers.

- :func:`alignment_score`: does the anomaly map of the whole image agree with the mask? The AUROC of the map
  against the mask, with a band around the mask left out and every value below ``alignment_floor`` (normal
  units) treated as equally normal. 1.0: every mask pixel is more anomalous than every pixel away from it;
  0.5: no agreement (also what an image without any visible anomaly scores: all its values tie at the floor);
  below 0.5: the anomaly lies elsewhere.
- :func:`background_score`: the most anomalous location outside the mask dilated by a margin, in normal units.
- :func:`copy_score`: the distance to the nearest training shot over the backbone's own round-trip error.

:func:`reject_reason` maps the numbers and the thresholds of a :class:`VerifyConfig` to ``None`` or a reason.
No torch here: the map comes from :class:`anogen.verify.normal.NormalModel`.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import numpy as np

from anogen.errors import InputError
from anogen.verify.config import VerifyConfig

if TYPE_CHECKING:
    from anogen.verify.normal import NormalModel
    from anogen.verify.shots import ShotBank

# Order of the reasons when several checks fail: the method's core failure first.
REASONS: tuple[str, ...] = ("misaligned", "background", "copy")


@dataclass(frozen=True)
class CheckScores:
    """The numbers of one sample (``copy`` is None when no shots were given; NaN alignment: empty mask)."""

    alignment: float
    background: float
    copy: float | None = None

    def to_dict(self) -> dict[str, float | None]:
        """JSON-ready (NaN becomes None)."""
        return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in asdict(self).items()}


def _dilate(mask: np.ndarray, radius: int) -> np.ndarray:
    """Dilation by a disc of ``radius`` pixels (exact, through the distance transform)."""
    from scipy.ndimage import distance_transform_edt

    if radius <= 0 or not mask.any():
        return mask.copy()
    return distance_transform_edt(~mask) <= radius


def _check_pair(anomaly_map: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    amap = np.asarray(anomaly_map, dtype=np.float64)
    m = np.asarray(mask) > 0
    if amap.ndim != 2 or amap.shape != m.shape:
        raise InputError(f"anomaly map {amap.shape} and mask {m.shape} must be 2-D arrays of one size")
    return amap, m


def alignment_score(anomaly_map: np.ndarray, mask: np.ndarray, *, floor: float = 1.0, band: int = 2) -> float:
    """AUROC of the anomaly map against the mask (mask pixels positive, pixels beyond ``band`` negative).

    Args:
        anomaly_map (`np.ndarray`): (H, W) map in normal units.
        mask (`np.ndarray`): (H, W) mask, nonzero = defect.
        floor (`float`, defaults to 1.0): values below it are raised to it (ties count one half).
        band (`int`, defaults to 2): pixels within this distance of the mask are neither positive nor negative.

    Returns:
        `float`: in [0, 1]; NaN when the mask is empty or leaves no negative pixel.
    """
    from scipy.stats import rankdata

    amap, m = _check_pair(anomaly_map, mask)
    negatives = ~_dilate(m, band)
    if not m.any() or not negatives.any():
        return float("nan")
    values = np.maximum(amap, floor)
    pos, neg = values[m], values[negatives]
    ranks = rankdata(np.concatenate([pos, neg]), method="average")
    u = ranks[: pos.size].sum() - pos.size * (pos.size + 1) / 2.0
    return float(u / (pos.size * neg.size))


def background_score(anomaly_map: np.ndarray, mask: np.ndarray, *, margin: int = 4) -> float:
    """The highest map value outside the mask dilated by ``margin`` pixels (0.0 if nothing is left outside)."""
    amap, m = _check_pair(anomaly_map, mask)
    outside = ~_dilate(m, margin)
    return float(amap[outside].max()) if outside.any() else 0.0


def copy_score(image: np.ndarray, shots: ShotBank) -> float:
    """Distance from the image to its nearest training shot, in units of the backbone's round-trip error."""
    return shots.distance(image) / shots.round_trip_error


def score_sample(
    image: np.ndarray,
    mask: np.ndarray,
    anomaly_map: np.ndarray,
    model: NormalModel,
    shots: ShotBank | None = None,
    config: VerifyConfig | None = None,
) -> CheckScores:
    """Every check of one sample.

    Args:
        image (`np.ndarray`): the whole image, HxWx3 uint8 RGB.
        mask (`np.ndarray`): its mask, HxW.
        anomaly_map (`np.ndarray`): the whole image's map in normal units (``model.anomaly_map(image)``).
        model (`NormalModel`): the category's normal model (its feature cell sets the band and margin in pixels).
        shots (`ShotBank`, *optional*): the defect type's training shots; without them ``copy`` is None.
        config (`VerifyConfig`, *optional*): band, margin and floor; default: the model's config.
    """
    config = config or model.config
    return CheckScores(
        alignment=alignment_score(anomaly_map, mask, floor=config.alignment_floor,
                                  band=round(config.alignment_band * model.stride)),
        background=background_score(anomaly_map, mask, margin=round(config.background_margin * model.stride)),
        copy=copy_score(image, shots) if shots is not None else None,
    )


def reject_reason(scores: CheckScores, config: VerifyConfig | None = None) -> str | None:
    """``None`` (accept) or the first failing reason of :data:`REASONS`; only mode ``reject`` rejects.

    A NaN alignment (empty mask) fails ``misaligned``: nothing can be verified about it. Without a config, the
    default thresholds in mode ``reject`` (the question asked is "would it fail?").
    """
    config = config or VerifyConfig(mode="reject")
    if config.mode != "reject":
        return None
    if math.isnan(scores.alignment) or scores.alignment < config.alignment_min:
        return "misaligned"
    if scores.background > config.background_max:
        return "background"
    if scores.copy is not None and scores.copy < config.copy_min:
        return "copy"
    return None
