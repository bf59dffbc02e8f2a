"""VisA reader: the split file ``split_csv/1cls.csv`` or, without it, the raw ``<object>/Data`` layout.

``1cls.csv`` has the columns ``object,split,label,image,mask`` with paths relative to the VisA root; normal
training rows become training normals, normal test rows test normals, and every anomalous row one sample of
the single defect type ``anomaly`` (VisA has no defect-type folders). Without the split file, images under
``Data/Images/Normal`` are training normals and ``Data/Images/Anomaly/<stem>.*`` pairs with
``Data/Masks/Anomaly/<stem>.png``. VisA's masks hold small class ids rather than 0/255: they are binarised at
> 0 without a warning, as the data set documents.
"""

from __future__ import annotations

import csv
from pathlib import Path

from anogen.data.check import Findings, inspect_image, inspect_mask, pair_defect_images, read_normal_folder
from anogen.data.model import Category, CategoryKind, DefectSample, DefectType, ImageInfo
from anogen.errors import DataError
from anogen.io import natural_key, safe_name
from anogen.progress import ProgressCallback

OBJECTS = frozenset(
    {
        "candle", "capsules", "cashew", "chewinggum", "fryum", "macaroni1", "macaroni2",
        "pcb1", "pcb2", "pcb3", "pcb4", "pipe_fryum",
    }
)  # fmt: skip
DEFECT = "anomaly"
SPLIT_FILE = Path("split_csv") / "1cls.csv"
COLUMNS = ("object", "split", "label", "image", "mask")


def is_category(folder: Path) -> bool:
    return (folder / "Data" / "Images").is_dir()


def is_root(folder: Path) -> bool:
    return (folder / SPLIT_FILE).is_file()


def objects_in_split_file(root: Path) -> list[str]:
    """Object names listed in ``root/split_csv/1cls.csv`` (empty if the file cannot be read)."""
    try:
        with open(root / SPLIT_FILE, newline="", encoding="utf-8-sig") as handle:
            return sorted({row.get("object", "") for row in csv.DictReader(handle)} - {""})
    except (OSError, csv.Error, UnicodeDecodeError):
        return []


def read(root: Path, name: str, *, progress: ProgressCallback | None = None) -> Category:
    """Read object ``name`` of a VisA tree.

    Args:
        root: the VisA root (holding ``split_csv/1cls.csv`` and ``<name>/``), or, without a split file,
            the object folder itself (``name`` is then its folder name).
        name: the object, e.g. ``candle``.
    """
    if is_root(root):
        return _read_split_file(root, name, progress)
    return _read_raw(root, progress)


def _read_raw(folder: Path, progress: ProgressCallback | None) -> Category:
    findings = Findings(progress)
    category = Category(name=safe_name(folder.name), root=folder, dataset_format="visa", kind=CategoryKind.OBJECT)
    images = folder / "Data" / "Images"
    category.train_normals = read_normal_folder(images / "Normal", findings, required=True, what="normal images")
    anomaly_dir = images / "Anomaly"
    if not anomaly_dir.is_dir():
        findings.error(anomaly_dir, "missing folder: VisA keeps its anomalous images in Data/Images/Anomaly")
    else:
        samples = pair_defect_images(
            anomaly_dir, folder / "Data" / "Masks" / "Anomaly", findings, DEFECT, mask_suffixes=("",),
            expect_binary=False,
        )
        category.defects[DEFECT] = DefectType(DEFECT, samples)
    category.problems = findings.close()
    return category


def _read_split_file(root: Path, name: str, progress: ProgressCallback | None) -> Category:
    split_file = root / SPLIT_FILE
    try:
        with open(split_file, newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            missing = [c for c in COLUMNS if c not in (reader.fieldnames or [])]
            if missing:
                raise DataError(f"{split_file}: missing column(s) {', '.join(missing)} (expected {','.join(COLUMNS)})")
            rows = [(line, row) for line, row in enumerate(reader, start=2) if row["object"] == name]
    except (OSError, csv.Error, UnicodeDecodeError) as exc:
        raise DataError(f"{split_file}: cannot read the split file ({exc})") from exc
    findings = Findings(progress)
    category = Category(name=safe_name(name), root=root / name, dataset_format="visa", kind=CategoryKind.OBJECT)
    if not rows:
        findings.error(split_file, f"no rows for object {name!r}")
    samples: list[DefectSample] = []
    stems: set[str] = set()
    for line, row in rows:
        where = f"{SPLIT_FILE.as_posix()} line {line}"
        image_path = _listed_path(root, row["image"], where, findings)
        if image_path is None:
            continue
        label = row["label"].strip().lower()
        split = row["split"].strip().lower()
        if label == "normal":
            info = inspect_image(image_path, findings)
            if info is not None:
                (category.train_normals if split == "train" else category.test_normals).append(info)
            continue
        if label != "anomaly":
            findings.error(split_file, f"line {line}: unknown label {row['label']!r} (expected normal or anomaly)")
            continue
        info = inspect_image(image_path, findings, DEFECT)
        mask_path = _listed_path(root, row["mask"], where, findings, defect=DEFECT, what="mask")
        if info is None or mask_path is None:
            continue
        if image_path.stem in stems:
            findings.error(image_path, f"two anomalous images share the stem {image_path.stem!r}", DEFECT)
            continue
        stems.add(image_path.stem)
        checked = inspect_mask(mask_path, info, findings, DEFECT, expect_binary=False)
        if checked is not None:
            samples.append(DefectSample(image=info, mask=checked[0], stem=image_path.stem, mask_coverage=checked[1]))
    if rows and not category.train_normals:
        findings.error(split_file, f"no normal training rows for object {name!r}")
    if rows:
        if not any(row["label"].strip().lower() == "anomaly" for _, row in rows):
            findings.error(split_file, f"no anomalous rows for object {name!r}", DEFECT)
        samples.sort(key=lambda s: natural_key(s.stem))
        category.defects[DEFECT] = DefectType(DEFECT, samples)
    _sort_infos(category.train_normals)
    _sort_infos(category.test_normals)
    category.problems = findings.close()
    return category


def _listed_path(
    root: Path, rel: str | None, where: str, findings: Findings, *, defect: str | None = None, what: str = "image"
) -> Path | None:
    rel = (rel or "").strip()
    if not rel:
        findings.error(root / SPLIT_FILE, f"{where}: no {what} path", defect)
        return None
    candidate = Path(rel)
    if candidate.is_absolute() or ".." in candidate.parts:
        findings.error(root / SPLIT_FILE, f"{where}: {what} path {rel!r} leaves the data set root", defect)
        return None
    path = root / candidate
    if not path.is_file():
        findings.error(path, f"{what} listed in {where} does not exist", defect)
        return None
    return path


def _sort_infos(infos: list[ImageInfo]) -> None:
    infos.sort(key=lambda i: natural_key(i.path.name))
