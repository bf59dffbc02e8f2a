"""MVTec AD reader: ``<cat>/train/good``, ``<cat>/test/good``, ``<cat>/test/<defect>``, ``<cat>/ground_truth/<defect>``.

Masks are ``ground_truth/<defect>/<stem>_mask.png`` and pair with ``test/<defect>/<stem>.png`` by stem (never by
string-replacing ``test`` in a path, which breaks on roots such as ``/data/test-sets/``). The toy world is written
in the same layout and is read by this module too (its category folder carries a ``toy.json`` marker).
"""

from __future__ import annotations

import json
from pathlib import Path

from anogen.data.check import Findings, read_defect_folders, read_normal_folder, sub_folders
from anogen.data.model import Category, CategoryKind
from anogen.io import safe_name
from anogen.progress import ProgressCallback

TEXTURES = frozenset({"carpet", "grid", "leather", "tile", "wood"})
OBJECTS = frozenset(
    {"bottle", "cable", "capsule", "hazelnut", "metal_nut", "pill", "screw", "toothbrush", "transistor", "zipper"}
)
CATEGORIES = TEXTURES | OBJECTS
TOY_MARKER = "toy.json"


def is_category(folder: Path) -> bool:
    """Whether ``folder`` looks like an MVTec AD category (any of its three top folders is there)."""
    return any((folder / name).is_dir() for name in ("train", "test", "ground_truth"))


def kind_of(name: str) -> CategoryKind:
    return CategoryKind.TEXTURE if name in TEXTURES else CategoryKind.OBJECT


def read(folder: Path, *, dataset_format: str = "mvtec", progress: ProgressCallback | None = None) -> Category:
    """Read one MVTec AD category folder.

    Args:
        folder: the category folder (``.../bottle``).
        dataset_format: ``mvtec``, or ``toy`` for a toy-world category (same layout, kind from ``toy.json``).

    Returns:
        The category; every problem found is in ``category.problems``.
    """
    findings = Findings(progress)
    name = safe_name(folder.name)
    kind = _toy_kind(folder, findings) if dataset_format == "toy" else kind_of(name)
    category = Category(name=name, root=folder, dataset_format=dataset_format, kind=kind)

    category.train_normals = read_normal_folder(
        folder / "train" / "good", findings, required=True, what="normal training images"
    )
    test_dir = folder / "test"
    category.test_normals = read_normal_folder(test_dir / "good", findings, required=False, what="normal test images")

    gt_dir = folder / "ground_truth"
    defect_dirs = [d for d in sub_folders(test_dir, findings) if d.name != "good"] if test_dir.is_dir() else []
    if not test_dir.is_dir():
        findings.error(test_dir, "missing: MVTec AD keeps its defect images in test/<defect>/")
    elif not defect_dirs:
        findings.error(test_dir, "no defect folders (test/ holds only good/)")
    read_defect_folders(category, defect_dirs, gt_dir, findings, mask_suffixes=("_mask",))

    if gt_dir.is_dir():
        known = {d.name for d in defect_dirs}
        for mask_dir in sub_folders(gt_dir, findings):
            if mask_dir.name not in known and mask_dir.name != "good":
                findings.error(mask_dir, f"masks without images: there is no test/{mask_dir.name}/ folder")
    category.problems = findings.close()
    return category


def _toy_kind(folder: Path, findings: Findings) -> CategoryKind | None:
    try:
        marker = json.loads((folder / TOY_MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        findings.warn(folder / TOY_MARKER, f"unreadable toy marker ({exc}); category kind unknown")
        return None
    value = marker.get("kind") if isinstance(marker, dict) else None
    try:
        return CategoryKind(value) if value is not None else None
    except ValueError:
        findings.warn(folder / TOY_MARKER, f"unknown kind {value!r} (expected object or texture)")
        return None
