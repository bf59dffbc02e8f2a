"""Location and shape statistics of the defect masks, in the frame of the object's bounding box; which masks
feed them; and the pictures: location heat maps and the object-mask preview grid."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from anogen.data.model import Category
from anogen.errors import InputError
from anogen.io import load_mask, safe_name
from anogen.priors.inputs import _Job, _read_image, _read_mask
from anogen.priors.params import PriorParams
from anogen.priors.record import _resize_bool, fraction_on_object


def _stats_stems(category: Category, stats_from: str, shots: int | None) -> dict[str, list[str]]:
    """Per defect type (safe name), the stems whose masks feed the statistics."""
    from anogen.data.split import few_shot_split

    if stats_from not in ("train", "all"):
        raise InputError(f"stats_from must be train or all, not {stats_from!r}")
    stems: dict[str, list[str]] = {}
    for name, defect in category.defects.items():
        if not defect.samples:
            continue
        samples = few_shot_split(defect, shots).train if stats_from == "train" else defect.samples
        stems[safe_name(name)] = [safe_name(s.stem) for s in samples]
    return stems


def _defect_statistics(
    jobs: list[_Job],
    object_masks: dict[tuple[str, str], Path],
    params: PriorParams,
    stats_stems: dict[str, list[str]],
    stats_from: str,
) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """Per defect type: the location map (in the object's bounding box) and mask-shape statistics."""
    from scipy import ndimage

    size = params.location_size
    by_defect: dict[str, list[_Job]] = {}
    for job in jobs:
        if job.defect is not None and job.stem in stats_stems.get(job.defect, ()):
            by_defect.setdefault(job.defect, []).append(job)
    infos: dict[str, dict[str, Any]] = {}
    shapes: dict[str, Any] = {}
    for name, defect_jobs in by_defect.items():
        heat = np.zeros((size, size), dtype=np.float64)
        stats: dict[str, list[float]] = {
            "area_fraction": [],
            "area_of_object": [],
            "bbox_aspect": [],
            "bbox_width": [],
            "bbox_height": [],
            "components": [],
            "fraction_on_object": [],
            "center_x": [],
            "center_y": [],
        }
        with_mask = 0
        for job in defect_jobs:
            if job.mask is None:
                continue
            mask = _read_mask(job.mask.path)
            if not mask.any():
                continue
            with_mask += 1
            obj_path = object_masks.get((job.split, job.stem))
            obj = load_mask(obj_path) if obj_path is not None else None
            if obj is None or obj.shape != mask.shape:
                obj = np.ones_like(mask) if obj is None else _resize_bool(obj, mask.shape)
            y0, y1, x0, x1 = _bbox(obj) if obj.any() else (0, mask.shape[0], 0, mask.shape[1])
            crop = mask[y0:y1, x0:x1].astype(np.float32)
            if crop.size:
                heat += np.asarray(Image.fromarray(crop, mode="F").resize((size, size), Image.BOX), dtype=np.float64)
            my0, my1, mx0, mx1 = _bbox(mask)
            height, width = mask.shape
            _, components = ndimage.label(mask)
            ys, xs = np.nonzero(mask)
            stats["area_fraction"].append(float(mask.mean()))
            stats["area_of_object"].append(float(mask.sum() / max(1, obj.sum())))
            stats["bbox_aspect"].append((mx1 - mx0) / (my1 - my0))
            stats["bbox_width"].append((mx1 - mx0) / width)
            stats["bbox_height"].append((my1 - my0) / height)
            stats["components"].append(float(components))
            stats["fraction_on_object"].append(fraction_on_object(mask, obj))
            # Centre in the object's box: 0..1 inside it.
            stats["center_x"].append(float((xs.mean() + 0.5 - x0) / max(1, x1 - x0)))
            stats["center_y"].append(float((ys.mean() + 0.5 - y0) / max(1, y1 - y0)))
        heat = heat / max(1, with_mask)
        infos[name] = {
            "samples": len(defect_jobs),
            "with_mask": with_mask,
            "location": f"location/{name}.npy",
            "location_png": f"location/{name}.png",
            "stats_from": stats_from,
            "stems": [job.stem for job in defect_jobs],
            "_heat": heat,
        }
        shapes[name] = {"samples": len(defect_jobs), "with_mask": with_mask, "stats_from": stats_from}
        shapes[name].update({key: _summary(values) for key, values in stats.items()})
    return infos, shapes


def _bbox(mask: np.ndarray) -> tuple[int, int, int, int]:
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    return int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1


def _summary(values: list[float]) -> dict[str, float] | None:
    if not values:
        return None
    arr = np.asarray(values, dtype=np.float64)
    return {
        "min": round(float(arr.min()), 6),
        "median": round(float(np.median(arr)), 6),
        "mean": round(float(arr.mean()), 6),
        "max": round(float(arr.max()), 6),
    }


def _heat_png(heat: np.ndarray, scale: int = 4) -> np.ndarray:
    """A location map as an RGB PNG: black (never) to yellow (always), upscaled for viewing."""
    peak = float(heat.max())
    norm = heat / peak if peak > 0 else heat
    rgb = np.stack([np.clip(norm * 2, 0, 1), np.clip(norm * 2 - 1, 0, 1) * 0.9 + norm * 0.1, norm * 0.15], -1)
    img = (rgb * 255 + 0.5).astype(np.uint8)
    return np.kron(img, np.ones((scale, scale, 1), dtype=np.uint8))


def _preview(
    category: Category, jobs: list[_Job], object_masks: dict[tuple[str, str], Path], count: int, cell: int = 128
) -> np.ndarray:
    """Grid of normal images with the background tinted and the object outline drawn."""
    from scipy import ndimage

    normals = [j for j in jobs if j.role in ("train", "test") and (j.split, j.stem) in object_masks]
    if len(normals) > count:
        picks = np.linspace(0, len(normals) - 1, count).round().astype(int)
        normals = [normals[i] for i in picks]
    cols = max(1, int(np.ceil(np.sqrt(len(normals)))))
    rows = max(1, int(np.ceil(len(normals) / cols)))
    grid = np.full((rows * cell, cols * cell, 3), 32, dtype=np.uint8)
    for i, job in enumerate(normals):
        img = Image.fromarray(_read_image(job.info.path)).resize((cell, cell), Image.BILINEAR)
        obj = Image.fromarray(load_mask(object_masks[(job.split, job.stem)]).astype(np.uint8) * 255).resize(
            (cell, cell), Image.NEAREST
        )
        arr = np.asarray(img).astype(np.float32)
        mask = np.asarray(obj) > 0
        tint = np.array([40, 80, 200], dtype=np.float32)
        arr = np.where(mask[..., None], arr, arr * 0.5 + tint * 0.5)
        edge = mask & ~ndimage.binary_erosion(mask, iterations=1)
        arr[edge] = (255, 64, 32)
        r, c = divmod(i, cols)
        grid[r * cell : (r + 1) * cell, c * cell : (c + 1) * cell] = arr.astype(np.uint8)
    return grid
