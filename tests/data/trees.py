"""Small dataset trees on disk, in every layout anogen reads (32 px PNGs written with PIL).

Other tests reuse these: ``from tests.data.trees import write_mvtec``. Every writer returns the path a user
would pass to ``anogen data check`` (the category folder, or the root for VisA) and uses fixed pixel values
so the expected mask coverage of each sample is known: a defect's mask is a ``box`` rectangle.
"""

from __future__ import annotations

import csv
from collections.abc import Mapping
from pathlib import Path

import numpy as np
from PIL import Image

SIZE = 32
BOX = (8, 8, 16, 20)  # x0, y0, x1, y1 of every defect mask: 8 x 12 = 96 of 1024 pixels
BOX_COVERAGE = (BOX[2] - BOX[0]) * (BOX[3] - BOX[1]) / (SIZE * SIZE)


def write_image(path: Path, size: int | tuple[int, int] = SIZE, mode: str = "RGB", seed: int = 0) -> Path:
    """A random-noise image of the given PIL mode (``RGB``, ``L``, ``RGBA``, ``I;16``) and size."""
    w, h = (size, size) if isinstance(size, int) else size
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    if mode == "RGB":
        img = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
    elif mode == "RGBA":
        img = Image.fromarray(rng.integers(0, 256, (h, w, 4), dtype=np.uint8))
    elif mode == "L":
        img = Image.fromarray(rng.integers(0, 256, (h, w), dtype=np.uint8))
    elif mode == "I;16":
        img = Image.fromarray(rng.integers(0, 65536, (h, w), dtype=np.uint16))  # uint16 arrays become I;16
    else:
        raise ValueError(mode)
    img.save(path)
    return path


def write_mask(
    path: Path, size: int | tuple[int, int] = SIZE, box: tuple[int, int, int, int] = BOX, value: int = 255
) -> Path:
    """A single-channel mask: ``value`` inside ``box``, 0 elsewhere."""
    w, h = (size, size) if isinstance(size, int) else size
    arr = np.zeros((h, w), dtype=np.uint8)
    x0, y0, x1, y1 = box
    arr[y0:y1, x0:x1] = value
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)
    return path


def write_mvtec(
    root: Path,
    category: str = "bottle",
    defects: Mapping[str, int] | None = None,
    train: int = 4,
    test_good: int = 2,
    size: int = SIZE,
) -> Path:
    """An MVTec AD category: train/good, test/good, test/<defect>/NNN.png, ground_truth/<defect>/NNN_mask.png."""
    defects = {"crack": 3, "scratch": 2} if defects is None else defects
    folder = root / category
    for i in range(train):
        write_image(folder / "train" / "good" / f"{i:03d}.png", size, seed=i)
    for i in range(test_good):
        write_image(folder / "test" / "good" / f"{i:03d}.png", size, seed=100 + i)
    for d, (name, n) in enumerate(defects.items()):
        (folder / "test" / name).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            write_image(folder / "test" / name / f"{i:03d}.png", size, seed=1000 * (d + 1) + i)
            write_mask(folder / "ground_truth" / name / f"{i:03d}_mask.png", size)
    return folder


def write_mvtec2(root: Path, category: str = "can", bad: int = 3, train: int = 3, size: int = SIZE) -> Path:
    """An MVTec AD 2 category: train/good, validation/good, test_public/{good,bad}, test_public/ground_truth/bad."""
    folder = root / category
    for i in range(train):
        write_image(folder / "train" / "good" / f"{i:03d}_regular.png", size, seed=i)
    write_image(folder / "validation" / "good" / "000_regular.png", size, seed=50)
    write_image(folder / "test_public" / "good" / "000_regular.png", size, seed=60)
    for i in range(bad):
        write_image(folder / "test_public" / "bad" / f"{i:03d}_regular.png", size, seed=70 + i)
        write_mask(folder / "test_public" / "ground_truth" / "bad" / f"{i:03d}_regular_mask.png", size)
    return folder


def write_visa(
    root: Path,
    objects: tuple[str, ...] = ("candle",),
    anomalies: int = 3,
    normals: int = 4,
    size: int | tuple[int, int] = (40, 32),
    split_file: bool = True,
    mask_value: int = 1,
) -> Path:
    """A VisA root: <object>/Data/Images/{Normal,Anomaly}/*.JPG, Data/Masks/Anomaly/*.png, split_csv/1cls.csv.

    Masks hold ``mask_value`` inside the box (VisA stores small ids, not 255). The first half of the normal images
    (rounded up) are training rows, the rest test rows; every anomaly is a test row, as in VisA's 1cls split.
    """
    rows = []
    for obj in objects:
        data = root / obj / "Data"
        for i in range(normals):
            rel = Path(obj) / "Data" / "Images" / "Normal" / f"{i:04d}.JPG"
            _write_jpeg(root / rel, size, seed=i)
            rows.append([obj, "train" if i < (normals + 1) // 2 else "test", "normal", rel.as_posix(), ""])
        for i in range(anomalies):
            rel = Path(obj) / "Data" / "Images" / "Anomaly" / f"{i:03d}.JPG"
            mask_rel = Path(obj) / "Data" / "Masks" / "Anomaly" / f"{i:03d}.png"
            _write_jpeg(root / rel, size, seed=200 + i)
            write_mask(root / mask_rel, size, value=mask_value)
            rows.append([obj, "test", "anomaly", rel.as_posix(), mask_rel.as_posix()])
        assert data.is_dir()
    if split_file:
        (root / "split_csv").mkdir(parents=True, exist_ok=True)
        with open(root / "split_csv" / "1cls.csv", "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(["object", "split", "label", "image", "mask"])
            writer.writerows(rows)
    return root


def _write_jpeg(path: Path, size: int | tuple[int, int], seed: int) -> None:
    w, h = (size, size) if isinstance(size, int) else size
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path, format="JPEG")


def write_folder(
    root: Path,
    name: str = "widget",
    defects: Mapping[str, int] | None = None,
    normals: int = 3,
    size: int = SIZE,
    mask_suffix: str = "",
    config: str | None = None,
    good: str = "good",
    defects_dir: str = "defects",
    masks_dir: str = "masks",
) -> Path:
    """The generic layout: good/, defects/<type>/<stem>.png, masks/<type>/<stem><mask_suffix>.png.

    ``config`` is written verbatim to ``anogen-data.yaml`` (pass the folder names it declares).
    """
    defects = {"dent": 3, "stain": 4} if defects is None else defects
    folder = root / name
    for i in range(normals):
        write_image(folder / good / f"img_{i}.png", size, seed=i)
    for d, (defect, n) in enumerate(defects.items()):
        (folder / defects_dir / defect).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            write_image(folder / defects_dir / defect / f"img_{i}.png", size, seed=500 * (d + 1) + i)
            write_mask(folder / masks_dir / defect / f"img_{i}{mask_suffix}.png", size)
    if config is not None:
        (folder / "anogen-data.yaml").write_text(config, encoding="utf-8")
    return folder
