"""Dataset readers: every supported tree becomes one :class:`~anogen.data.model.Category`.

>>> from anogen.data import read_category          # doctest: +SKIP
>>> category = read_category("/data/mvtec", category="bottle")  # doctest: +SKIP
>>> [str(p) for p in category.errors]               # doctest: +SKIP
[]

Layouts: ``mvtec`` (MVTec AD), ``mvtec2`` (MVTec AD 2), ``visa`` (VisA, split file or raw ``Data/``),
``folder`` (a user's own product, see :mod:`anogen.data.folder`) and ``toy`` (the built-in toy world, written
in the MVTec AD layout with a ``toy.json`` marker).
"""

from __future__ import annotations

from pathlib import Path

from anogen.data import folder as folder_reader
from anogen.data import mvtec, mvtec2, visa
from anogen.data.model import Category, CategoryKind, DefectSample, DefectType, ImageInfo, Problem, Severity
from anogen.errors import DataError
from anogen.io import natural_key
from anogen.progress import ProgressCallback

FORMATS = ("mvtec", "mvtec2", "visa", "folder", "toy")
# What each layout holds, for the error when --format names a layout the folder does not have (docs/formats.md).
LAYOUTS = {
    "mvtec": "an MVTec AD category holds train/good/, test/<defect>/ and ground_truth/<defect>/; "
    "a root holds one such folder per category",
    "toy": "a toy category (anogen toy make) holds toy.json, train/good/, test/<defect>/ and ground_truth/<defect>/",
    "mvtec2": "an MVTec AD 2 category holds train/, validation/ and test_public/; a root holds one per category",
    "visa": "a VisA root holds split_csv/1cls.csv and one folder per object (candle/, pcb1/, ...); an object "
    "folder holds Data/Images/Normal/, Data/Images/Anomaly/ and Data/Masks/Anomaly/",
    "folder": "an own-layout category holds good/ and defects/<defect>/ (or an anogen-data.yaml); see docs/data.md",
}


def category_format(folder: Path) -> str | None:
    """The layout of ``folder`` if it is itself a category folder, else ``None``.

    The order matters: markers first (``toy.json``, ``anogen-data.yaml``), then the layout whose folders are
    the most specific (``Data/Images`` of VisA, ``test_public`` of MVTec AD 2) before MVTec AD's plain ``test``.
    """
    if (folder / mvtec.TOY_MARKER).is_file():
        return "toy"
    if (folder / folder_reader.CONFIG_FILE).is_file():
        return "folder"
    if visa.is_category(folder):
        return "visa"
    if mvtec2.is_category(folder):
        return "mvtec2"
    if mvtec.is_category(folder):
        return "mvtec"
    if folder_reader.is_category(folder):
        return "folder"
    return None


def _children(root: Path) -> list[Path]:
    return sorted(
        (p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")), key=lambda p: natural_key(p.name)
    )


def _categories_under(root: Path) -> dict[str, str]:
    """Category folder name -> layout, for every category directly under a dataset root."""
    found = {child.name: fmt for child in _children(root) if (fmt := category_format(child)) is not None}
    if visa.is_root(root):
        for name in visa.objects_in_split_file(root):
            found.setdefault(name, "visa")
    return found


def detect_format(path: str | Path) -> str:
    """The layout of a category folder or dataset root: ``mvtec``, ``mvtec2``, ``visa``, ``folder`` or ``toy``.

    Raises:
        DataError: the path does not exist, or no supported layout is recognised.
    """
    path = _existing_dir(path)
    fmt = category_format(path)
    if fmt is not None:
        return fmt
    if visa.is_root(path):
        return "visa"
    layouts = set(_categories_under(path).values())
    if len(layouts) == 1:
        return layouts.pop()
    if len(layouts) > 1:
        raise DataError(
            f"{path} holds categories in several layouts ({', '.join(sorted(layouts))})",
            hint="pass --format and --category",
        )
    raise DataError(
        f"{path}: cannot tell the dataset layout (no train/, test/, test_public/, Data/, split_csv/ or good/+defects/)",
        hint="pass --format mvtec|mvtec2|visa|folder; the layouts are described in docs/data.md",
    )


def read_category(
    path: str | Path,
    *,
    category: str | None = None,
    dataset_format: str = "auto",
    progress: ProgressCallback | None = None,
) -> Category:
    """Read one category of a dataset tree and validate every file.

    Args:
        path (`str | Path`): a category folder, or a dataset root together with ``category``.
        category (`str`, *optional*): the category (or VisA object) to read under a dataset root.
        dataset_format (`str`, defaults to `"auto"`): ``auto``, ``mvtec``, ``mvtec2``, ``visa``, ``folder``
            or ``toy``. ``mvtec`` is read as ``toy`` when the category folder holds the toy world's
            ``toy.json`` marker.
        progress (`ProgressCallback`, *optional*): called once per image read (``reading images``).

    Returns:
        `Category`: normal images, defect types with their samples, and ``problems`` (errors and warnings:
        one line each, naming the file). Callers refuse to train when ``category.errors`` is not empty.

    Raises:
        DataError: the path does not exist, the root does not hold ``category``, a root is given without
            ``category``, or the layout cannot be recognised.
    """
    root = _existing_dir(path)
    if dataset_format != "auto" and dataset_format not in FORMATS:
        raise DataError(f"unknown dataset format {dataset_format!r} (choose from auto, {', '.join(FORMATS)})")
    folder = _category_folder(root, category, dataset_format)
    fmt = dataset_format
    if fmt == "auto":
        fmt = category_format(folder) or ("visa" if visa.is_root(root) else "")
        if not fmt:
            detect_format(folder)  # raises the "cannot tell" error with its hint
    elif fmt == "mvtec" and (folder / mvtec.TOY_MARKER).is_file():
        fmt = "toy"
    if fmt == "visa":
        visa_root = _visa_root(root, folder)
        result = visa.read(visa_root if visa_root is not None else folder, folder.name, progress=progress)
    elif fmt == "mvtec2":
        result = mvtec2.read(folder, progress=progress)
    elif fmt == "folder":
        result = folder_reader.read(folder, progress=progress)
    else:
        result = mvtec.read(folder, dataset_format=fmt, progress=progress)
    return result


def holds_category(root: str | Path, category: str) -> bool:
    """Whether ``root`` is a data set root that holds ``category`` (a folder of that name, or a VisA root whose
    split file lists it), rather than a category folder itself."""
    root = Path(root)
    return (root / category).is_dir() or (visa.is_root(root) and category in visa.objects_in_split_file(root))


def _existing_dir(path: str | Path) -> Path:
    path = Path(path).expanduser()
    if not path.exists():
        raise DataError(f"{path} does not exist", hint="pass a category folder, or a dataset root with --category")
    if not path.is_dir():
        raise DataError(f"{path} is not a folder", hint="pass a category folder, or a dataset root with --category")
    return path


def _is_category(folder: Path, fmt: str) -> bool:
    if fmt == "auto":
        return category_format(folder) is not None
    return {
        "mvtec": mvtec.is_category,
        "toy": mvtec.is_category,
        "mvtec2": mvtec2.is_category,
        "visa": visa.is_category,
        "folder": folder_reader.is_category,
    }[fmt](folder) or category_format(folder) == fmt


def _category_folder(root: Path, category: str | None, fmt: str) -> Path:
    if category is not None:
        if Path(category).name != category or category in ("", ".", ".."):
            raise DataError(f"--category must be a folder name, got {category!r}")
        if holds_category(root, category):
            return root / category
        if root.name == category and _is_category(root, fmt):
            return root  # the category folder itself, named again with --category
        held = sorted(_categories_under(root), key=natural_key)
        hint = f"it holds: {', '.join(held)}" if held else "it holds no category folders"
        raise DataError(f"{root} holds no category {category!r}", hint=hint)
    if _is_category(root, fmt):
        return root
    found = _categories_under(root)
    if fmt != "auto":
        # Only categories of the asked layout: a folder of another layout is no answer to --format.
        found = {n: f for n, f in found.items() if f == fmt or {f, fmt} <= {"mvtec", "toy"}}
        if not found:
            raise DataError(f"{root} is neither a {fmt} category folder nor a {fmt} dataset root", hint=LAYOUTS[fmt])
    held = sorted(found, key=natural_key)
    if held:
        raise DataError(
            f"{root} is a dataset root, not a category folder",
            hint=f"pass --category NAME (one of: {', '.join(held)})",
        )
    if fmt != "auto":
        raise DataError(
            f"{root} is not a {fmt} category folder",
            hint="see docs/data.md for the layouts anogen reads",
        )
    return root  # detect_format raises the "cannot tell" error with its hint


def _visa_root(root: Path, folder: Path) -> Path | None:
    """The VisA root holding ``split_csv/1cls.csv`` for ``folder``: ``root`` itself or the object's parent."""
    for candidate in (root, folder.parent):
        if visa.is_root(candidate) and folder.parent == candidate:
            return candidate
    return None


__all__ = [
    "FORMATS",
    "Category",
    "CategoryKind",
    "DefectSample",
    "DefectType",
    "ImageInfo",
    "Problem",
    "Severity",
    "category_format",
    "detect_format",
    "holds_category",
    "read_category",
]
