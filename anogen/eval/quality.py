"""Quality figures of a synth output that need no detector: alignment, diversity, memorisation, rejections.

- **Alignment** (where measurable): the IoU between each sample's mask and the defect pixels of its whole image,
  found by a ``defect_pixels(image, defect)`` function (the toy world's colour rule; injectable so any data set
  with a known defect colour can supply one). The same IoU over shuffled (mask, image) pairs is the chance level.
- **Diversity**: mean pairwise distance among the samples of one defect type (RMSE of RGB in [0, 1] at a common
  size); the real training shots' own mean pairwise distance is given beside it for scale.
- **Memorisation**: each sample's distance to its nearest training shot; a sample closer than
  ``near_copy_rmse`` is flagged as a near-copy.
- **Rejections**: the share of attempts the mask step rejected, and why.

Subsampling uses a fixed seed, so the figures repeat exactly.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from anogen.io import load_mask, load_rgb
from anogen.seeding import derive_seed

DefectPixels = Callable[[np.ndarray, str], np.ndarray]

#: RMSE (RGB in [0, 1]) under which a sample counts as a near-copy of a training shot: about 2% of the range,
#: below JPEG-level noise and far below the distance between two different photos of one object.
NEAR_COPY_RMSE = 0.02


def iou(a: np.ndarray, b: np.ndarray) -> float | None:
    """Intersection over union of two boolean masks; ``None`` when both are empty."""
    a, b = np.asarray(a, dtype=bool), np.asarray(b, dtype=bool)
    union = np.logical_or(a, b).sum()
    return None if union == 0 else float(np.logical_and(a, b).sum() / union)


def _mean(values: Sequence[float | None]) -> float | None:
    kept = [v for v in values if v is not None]
    return float(np.mean(kept)) if kept else None


def alignment(
    pairs: Sequence[tuple[np.ndarray, np.ndarray]], defect: str, defect_pixels: DefectPixels, *, seed: int = 0
) -> dict[str, Any]:
    """Mask-image alignment of samples of one defect type, and its chance level.

    Args:
        pairs: `(image uint8 (H, W, 3), mask bool (H, W))` per sample.
        defect: the defect type, passed to ``defect_pixels``.
        defect_pixels: ``(image, defect) -> bool (H, W)``, the pixels that show the defect.
        seed: seed of the shuffle for the chance level.

    Returns:
        `{"iou": mean IoU, "chance_iou": mean IoU over shuffled pairs, "n": samples}`; the chance level pairs
        each mask with another sample's image (a derangement), so it is ``None`` for a single sample.
    """
    found = [np.asarray(defect_pixels(image, defect), dtype=bool) for image, _ in pairs]
    masks = [mask for _, mask in pairs]
    matched = _mean([iou(m, f) for m, f in zip(masks, found, strict=True)])
    chance = None
    if len(pairs) >= 2:
        order = np.random.default_rng(seed).permutation(len(pairs))
        # Pair each sample with the next in a random cycle: nobody keeps its own image.
        chance = _mean([iou(masks[order[j]], found[order[(j + 1) % len(order)]]) for j in range(len(order))])
    return {"iou": matched, "chance_iou": chance, "n": len(pairs)}


def _vectors(images: Sequence[np.ndarray], size: int) -> np.ndarray:
    out = np.empty((len(images), size * size * 3), dtype=np.float64)
    for i, img in enumerate(images):
        if img.shape[:2] != (size, size):
            img = np.asarray(Image.fromarray(img).resize((size, size), Image.BILINEAR))
        out[i] = img.reshape(-1) / 255.0
    return out


def _pairwise_rmse(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    sq = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * a @ b.T
    return np.sqrt(np.maximum(sq, 0.0) / a.shape[1])


def diversity(images: Sequence[np.ndarray], *, size: int = 64, max_samples: int = 200, seed: int = 0) -> float | None:
    """Mean pairwise RMSE among images (at most ``max_samples``, chosen with ``seed``); ``None`` under two."""
    if len(images) < 2:
        return None
    if len(images) > max_samples:
        keep = np.sort(np.random.default_rng(seed).choice(len(images), size=max_samples, replace=False))
        images = [images[i] for i in keep]
    vec = _vectors(images, size)
    dist = _pairwise_rmse(vec, vec)
    upper = np.triu_indices(len(vec), k=1)
    return float(dist[upper].mean())


def memorisation(
    samples: Sequence[np.ndarray],
    shots: Sequence[np.ndarray],
    *,
    names: Sequence[str] | None = None,
    size: int = 64,
    near_copy_rmse: float = NEAR_COPY_RMSE,
) -> dict[str, Any]:
    """Each sample's RMSE to its nearest training shot; samples under ``near_copy_rmse`` are near-copies."""
    if not samples or not shots:
        return {"min": None, "median": None, "near_copies": 0, "near_copy_names": [], "threshold": near_copy_rmse}
    nearest = _pairwise_rmse(_vectors(samples, size), _vectors(shots, size)).min(axis=1)
    names = list(names) if names is not None else [str(i) for i in range(len(samples))]
    flagged = [n for n, d in zip(names, nearest, strict=True) if d < near_copy_rmse]
    return {
        "min": float(nearest.min()),
        "median": float(np.median(nearest)),
        "near_copies": len(flagged),
        "near_copy_names": flagged,
        "threshold": near_copy_rmse,
    }


def rejections(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Share of rejected attempts among all manifest rows, and the count per reason."""
    reasons: dict[str, int] = {}
    for row in rows:
        if not row.get("accepted"):
            key = str(row.get("reason") or "unknown")
            reasons[key] = reasons.get(key, 0) + 1
    total = len(rows)
    return {"attempts": total, "rejected_share": (sum(reasons.values()) / total) if total else None, "reasons": reasons}


def measure_quality(
    synth: Sequence[Any],
    shots: dict[str, Sequence[Path]],
    *,
    defect_pixels: DefectPixels | None = None,
    size: int = 64,
    max_samples: int = 200,
    seed: int = 0,
    near_copy_rmse: float = NEAR_COPY_RMSE,
) -> dict[str, dict[str, Any]]:
    """Every quality figure, per defect type of a synth output.

    Args:
        synth: :class:`~anogen.eval.protocol.SynthDefect` objects.
        shots: real training image paths per defect type (memorisation and real diversity).
        defect_pixels: the defect-colour rule; without it alignment is reported as not measurable (``None``).
        size: common size for distances.
        max_samples: at most this many samples per defect type (chosen with ``seed``).
        seed: seed of every subsample and shuffle.
        near_copy_rmse: near-copy threshold.
    """
    from anogen.records.manifest import read_all_rows

    result: dict[str, dict[str, Any]] = {}
    for sd in synth:
        chosen = list(range(len(sd.samples)))
        if len(chosen) > max_samples:
            rng = np.random.default_rng(derive_seed(seed, "quality", sd.category, sd.defect))
            chosen = sorted(rng.choice(len(chosen), size=max_samples, replace=False).tolist())
        images = [np.asarray(load_rgb(sd.samples[i][0]), dtype=np.uint8) for i in chosen]
        names = [sd.samples[i][0].stem for i in chosen]
        real = [np.asarray(load_rgb(p), dtype=np.uint8) for p in shots.get(sd.defect, [])]
        entry: dict[str, Any] = {
            "samples": len(sd.samples),
            "measured": len(chosen),
            "diversity": diversity(images, size=size, max_samples=max_samples, seed=seed),
            "real_shot_diversity": diversity(real, size=size, max_samples=max_samples, seed=seed),
            "memorisation": memorisation(images, real, names=names, size=size, near_copy_rmse=near_copy_rmse),
            "rejections": rejections(list(read_all_rows(sd.folder).values())),
            "alignment": None,
        }
        if defect_pixels is not None and images:
            pairs = []
            for img, i in zip(images, chosen, strict=True):
                mask = load_mask(sd.samples[i][1])
                if mask.shape != img.shape[:2]:
                    # Nearest neighbour keeps the mask binary.
                    resized = Image.fromarray(mask.astype(np.uint8) * 255).resize(img.shape[1::-1], Image.NEAREST)
                    mask = np.asarray(resized) > 0
                pairs.append((img, mask))
            entry["alignment"] = alignment(
                pairs, sd.defect, defect_pixels, seed=derive_seed(seed, "quality", "shuffle", sd.defect)
            )
        result[sd.defect] = entry
    return result
