"""The generic ``folder`` layout for a user's own product.

::

    my_product/
      anogen-data.yaml        # optional: overrides the names below
      good/                   # normal images (any names)
      defects/<type>/         # defect images, one folder per defect type
      masks/<type>/           # masks: <stem>.png or <stem>_mask.png for defects/<type>/<stem>.<ext>

``anogen-data.yaml`` (read with ``yaml.safe_load``; an unknown key is an error)::

    name: widget              # category name (default: the folder's name)
    kind: object              # object | texture (picks generic/object or generic/texture)
    normal: good              # folder of normal images
    test_normal: null         # optional folder of normal images kept for evaluation
    defects: defects          # folder holding one sub-folder per defect type
    masks: masks              # folder holding one sub-folder of masks per defect type
    mask_suffix: null         # "_mask" or "" to require one naming; null accepts both

Paths are relative to the category folder. See docs/data.md.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path

import yaml

from anogen.data.check import Findings, read_defect_folders, read_normal_folder, sub_folders
from anogen.data.model import Category, CategoryKind
from anogen.errors import DataError
from anogen.io import safe_name
from anogen.progress import ProgressCallback

CONFIG_FILE = "anogen-data.yaml"


@dataclass(frozen=True)
class FolderLayout:
    """Folder names of the generic layout (the fields of ``anogen-data.yaml``)."""

    name: str | None = None
    kind: str | None = None
    normal: str = "good"
    test_normal: str | None = None
    defects: str = "defects"
    masks: str = "masks"
    mask_suffix: str | None = None


def is_category(folder: Path) -> bool:
    return (folder / CONFIG_FILE).is_file() or ((folder / "good").is_dir() and (folder / "defects").is_dir())


def read_layout(folder: Path) -> FolderLayout:
    """The layout of ``folder``: defaults, overridden by its ``anogen-data.yaml`` if there is one."""
    path = folder / CONFIG_FILE
    if not path.is_file():
        return FolderLayout()
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read ({exc})") from exc
    except yaml.YAMLError as exc:
        raise DataError(f"{path}: not valid YAML ({exc})") from exc
    if data is None:
        return FolderLayout()
    if not isinstance(data, dict):
        raise DataError(f"{path}: expected a mapping of layout keys, got {type(data).__name__}")
    known = [f.name for f in fields(FolderLayout)]
    for key, value in data.items():
        if key not in known:
            raise DataError(f"{path}: unknown key {key!r} (known: {', '.join(known)})")
        if value is not None and not isinstance(value, str):
            raise DataError(f"{path}: {key} must be a string, got {value!r}")
    if data.get("kind") not in (None, *[k.value for k in CategoryKind]):
        raise DataError(f"{path}: kind must be object or texture, got {data['kind']!r}")
    for key in ("normal", "defects", "masks"):
        if key in data and not data[key]:
            raise DataError(f"{path}: {key} must name a folder")
    return FolderLayout(**{k: v for k, v in data.items() if v is not None})


def read(folder: Path, *, progress: ProgressCallback | None = None) -> Category:
    """Read a category in the generic folder layout; problems are collected in ``category.problems``.

    Raises:
        DataError: ``anogen-data.yaml`` is malformed (the layout itself cannot be known).
    """
    layout = read_layout(folder)
    findings = Findings(progress)
    kind = CategoryKind(layout.kind) if layout.kind else None
    category = Category(
        name=safe_name(layout.name or folder.name), root=folder, dataset_format="folder", kind=kind
    )
    category.train_normals = read_normal_folder(folder / layout.normal, findings, required=True, what="normal images")
    if layout.test_normal:
        category.test_normals = read_normal_folder(
            folder / layout.test_normal, findings, required=True, what="normal test images"
        )
    suffixes = ("", "_mask") if layout.mask_suffix is None else (layout.mask_suffix,)
    defects_dir = folder / layout.defects
    masks_dir = folder / layout.masks
    type_dirs = sub_folders(defects_dir, findings) if defects_dir.is_dir() else []
    if not defects_dir.is_dir():
        findings.error(defects_dir, "missing folder: one sub-folder of defect images per defect type belongs here")
    elif not type_dirs:
        findings.error(defects_dir, "no defect types: put each defect type's images in a sub-folder")
    read_defect_folders(category, type_dirs, masks_dir, findings, mask_suffixes=suffixes)
    if masks_dir.is_dir():
        known = {d.name for d in type_dirs}
        for mask_dir in sub_folders(masks_dir, findings):
            if mask_dir.name not in known:
                findings.error(mask_dir, f"masks without images: there is no {layout.defects}/{mask_dir.name}/ folder")
    category.problems = findings.close()
    return category
