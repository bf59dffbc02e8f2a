"""Synthetic synth folders and small MVTec trees drawn from known shapes, written the way the contracts say.

Nothing here calls anogen's writers: the files follow docs/architecture.md ("Synth output") and the MVTec AD
layout, so the export is tested against the documented formats, not against itself.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image


def disc_mask(size: tuple[int, int], centre: tuple[float, float], radius: float) -> np.ndarray:
    """Boolean HxW disc (size is (width, height))."""
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w]
    return (xx - centre[0]) ** 2 + (yy - centre[1]) ** 2 <= radius**2


def two_blobs(size: tuple[int, int], i: int) -> np.ndarray:
    """A mask with two separate components (a disc and a rectangle), placed by ``i``."""
    w, h = size
    mask = disc_mask(size, (w * 0.25 + (i % 3), h * 0.3), max(2.0, w / 10))
    mask[int(h * 0.65) : int(h * 0.65) + 4 + i % 3, int(w * 0.55) : int(w * 0.85)] = True
    return mask


def textured(size: tuple[int, int], seed: int, grayscale: bool = False) -> np.ndarray:
    rng = np.random.default_rng(seed)
    w, h = size
    base = rng.integers(40, 200, size=(h, w, 1 if grayscale else 3)).astype(np.uint8)
    return base[..., 0] if grayscale else base


def save(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def make_mvtec(
    root: Path,
    category: str = "widget",
    *,
    size: int = 40,
    grayscale: bool = False,
    n_train: int = 3,
    n_test_good: int = 2,
    defects: dict[str, int] | None = None,
) -> Path:
    """A small MVTec AD category: ``root/<category>/{train/good,test/good,test/<d>,ground_truth/<d>}``."""
    defects = defects if defects is not None else {"crack": 6}
    cat = root / category
    for i in range(n_train):
        save(cat / "train" / "good" / f"{i:03d}.png", textured((size, size), 100 + i, grayscale))
    for i in range(n_test_good):
        save(cat / "test" / "good" / f"{i:03d}.png", textured((size, size), 200 + i, grayscale))
    for d_index, (defect, n) in enumerate(sorted(defects.items())):
        for i in range(n):
            image = textured((size, size), 300 + 17 * d_index + i, grayscale)
            mask = two_blobs((size, size), i)
            image[mask] = 255
            save(cat / "test" / defect / f"{i:03d}.png", image)
            save(cat / "ground_truth" / defect / f"{i:03d}_mask.png", np.where(mask, 255, 0).astype(np.uint8))
    return cat


def make_synth(
    root: Path,
    category: str = "widget",
    defect: str = "crack",
    *,
    attempts: int = 6,
    size: int = 32,
    rejected: tuple[int, ...] = (2,),
    count: int | None = None,
    split: dict | None = None,
    data: dict | None = None,
    seed: int = 7,
    adapter_sha256: str = "ab" * 32,
    folder_names: tuple[str, str] | None = None,
) -> Path:
    """One synth defect folder ``root/<category>/<defect>/`` with ``attempts`` rows; ids in ``rejected`` fail.

    Masks are known shapes (a disc and a bar), images are texture with the mask drawn white, parts are grey
    with the mask drawn red.
    """
    cat_dir, defect_dir = folder_names or (category, defect)
    folder = root / cat_dir / defect_dir
    rows = []
    for i in range(attempts):
        name = f"{i:06d}"
        mask = two_blobs((size, size), i)
        image = textured((size, size), 1000 + i)
        image[mask] = (255, 255, 255)
        part = np.full((size, size, 3), 128, np.uint8)
        part[mask] = (200, 30, 30)
        accepted = i not in rejected
        if not accepted:
            mask = np.zeros_like(mask)
        save(folder / "image" / f"{name}.png", image)
        save(folder / "part" / f"{name}.png", part)
        save(folder / "mask" / f"{name}.png", np.where(mask, 255, 0).astype(np.uint8))
        rows.append(
            {
                "schema_version": 1,
                "id": i,
                "name": name,
                "seed": 5000 + i,
                "category": category,
                "defect": defect,
                "accepted": accepted,
                "reason": None if accepted else "empty_mask",
                "mask_area": float(mask.mean()),
                "image": f"image/{name}.png",
                "part": f"part/{name}.png",
                "mask": f"mask/{name}.png",
                "adapter_sha256": adapter_sha256,
            }
        )
    (folder / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    run = {
        "schema_version": 1,
        "anogen_version": "0.1.0",
        "adapter": {"path": str(root / "runs" / category / defect), "sha256": adapter_sha256},
        "category": category,
        "defect": defect,
        "backbone": {"source": "tiny", "content_hash": "00"},
        "data": data
        or {
            "root": None,
            "format": "mvtec",
            "category": category,
            "image_size": [40, 40],
            "grayscale": False,
            "kind": "object",
        },
        "sample": {"steps": 2},
        "mask": {"threshold": 0.12},
        "seed": seed,
        "count": count if count is not None else attempts,
    }
    if split is not None:
        run["split"] = split
    (folder / "run.json").write_text(json.dumps(run))
    return folder


def read_rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def resized_image(path: Path, size: tuple[int, int], mode: str) -> np.ndarray:
    """The reference resize the tests expect: 8-bit RGB/L, bicubic to ``size`` only when it differs."""
    with Image.open(path) as img:
        img = img.convert("RGB")
        if mode == "L":
            img = img.convert("L")
        if img.size != size:
            img = img.resize(size, Image.Resampling.BICUBIC)
        return np.asarray(img)


def resized_mask(path: Path, size: tuple[int, int]) -> np.ndarray:
    """Reference mask: > 0, nearest-neighbour to ``size``, as a boolean array."""
    with Image.open(path) as img:
        arr = np.asarray(img.convert("L")) > 0
    if arr.shape[::-1] != size:
        arr = np.asarray(Image.fromarray(arr.astype(np.uint8) * 255).resize(size, Image.Resampling.NEAREST)) > 0
    return arr
