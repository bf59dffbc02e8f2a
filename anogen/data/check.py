"""File-level validation shared by every reader, and the ``anogen data check`` report.

Readers call :class:`Findings` and the ``inspect_*`` helpers so that every layout reports the same problems
in the same words: one line per finding, naming the file. Errors make a tree unusable (``data check`` exits 2);
warnings say what was converted or ignored. Conversions that apply to many files of one folder (say, 200
grayscale images) are reported once per folder, naming the first file, so the real problems stay visible.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from anogen.data.model import Category, DefectSample, DefectType, ImageInfo, Problem, ProblemsMixin, Severity
from anogen.data.split import default_shots, few_shot_split
from anogen.errors import DataError
from anogen.io import natural_key, safe_name
from anogen.progress import ProgressCallback, report

logger = logging.getLogger(__name__)

PROGRESS_EVERY = 25  # images between progress events
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"})

# How each stored PIL mode is turned into 8-bit RGB by anogen.io.to_rgb, in words for the report.
_MODE_NOTES = {
    "L": "grayscale (L), read as RGB",
    "LA": "grayscale with alpha (LA), alpha dropped, read as RGB",
    "1": "1-bit, read as RGB",
    "P": "palette (P), expanded to RGB",
    "PA": "palette with alpha (PA), alpha dropped, read as RGB",
    "RGBA": "RGBA, alpha dropped (transparent pixels become black)",
    "I;16": "16-bit, scaled to 8 bits",
    "I;16B": "16-bit, scaled to 8 bits",
    "I;16L": "16-bit, scaled to 8 bits",
    "I": "32-bit integer, scaled to 8 bits",
    "F": "32-bit float, read as RGB",
    "CMYK": "CMYK, converted to RGB",
    "YCbCr": "YCbCr, converted to RGB",
    "LAB": "LAB, converted to RGB",
    "HSV": "HSV, converted to RGB",
}


class Findings:
    """Collects problems while a reader walks a tree.

    ``error`` and ``warn`` record one line each. ``note`` records a warning that may repeat for many files of
    one folder (a conversion); :meth:`close` folds those into one line per (folder, kind).
    """

    def __init__(self, progress: ProgressCallback | None = None) -> None:
        self.problems: list[Problem] = []
        self._notes: dict[tuple[Path, str, str | None], list[Path]] = defaultdict(list)
        self._progress = progress
        self._images_read = 0

    def image_read(self) -> None:
        """Count one decoded image for the progress display (a VisA category holds thousands)."""
        self._images_read += 1
        # Every image would flood plain (CI) logs for nothing on small trees; the display throttles the rest.
        if self._images_read % PROGRESS_EVERY == 0:
            report(self._progress, "reading images", self._images_read)

    def error(self, path: Path | None, message: str, defect: str | None = None) -> None:
        self.problems.append(Problem(Severity.ERROR, path, message, defect))

    def warn(self, path: Path | None, message: str, defect: str | None = None) -> None:
        self.problems.append(Problem(Severity.WARNING, path, message, defect))

    def note(self, path: Path, message: str, defect: str | None = None) -> None:
        self._notes[(path.parent, message, defect)].append(path)

    def close(self) -> list[Problem]:
        """Fold the notes into warnings and return every problem (errors first, then by path)."""
        for (folder, message, defect), paths in self._notes.items():
            if len(paths) == 1:
                self.warn(paths[0], message, defect)
            else:
                self.warn(folder, f"{len(paths)} files: {message} (first: {paths[0].name})", defect)
        self._notes.clear()
        return self.problems


def is_hidden(path: Path) -> bool:
    # Dot-files: .DS_Store, AppleDouble ._000.png, editor swap files. Thumbs.db is Windows' equivalent.
    return path.name.startswith(".") or path.name.lower() in ("thumbs.db", "desktop.ini")


def _entries(folder: Path, findings: Findings | None, defect: str | None = None) -> list[Path]:
    try:
        return sorted(folder.iterdir(), key=lambda p: natural_key(p.name))
    except OSError as exc:
        if findings is not None:
            findings.error(folder, f"cannot list folder ({exc.strerror or exc})", defect)
        return []


def list_image_files(folder: Path, findings: Findings, defect: str | None = None) -> list[Path]:
    """The image files of ``folder`` in natural filename order.

    Hidden files are skipped silently; other non-image files and sub-folders are skipped with a warning;
    two images with the same stem (``000.png`` and ``000.jpg``) are an error (masks pair by stem).
    """
    images: list[Path] = []
    for entry in _entries(folder, findings, defect):
        if is_hidden(entry):
            logger.debug("ignoring hidden file %s", entry)
            continue
        if entry.is_dir():
            findings.warn(entry, "ignored: a sub-folder inside an image folder", defect)
        elif entry.suffix.lower() not in IMAGE_SUFFIXES:
            findings.warn(entry, f"ignored: not an image file (suffix {entry.suffix or 'none'!r})", defect)
        else:
            images.append(entry)
    by_stem: dict[str, Path] = {}
    unique: list[Path] = []
    for path in images:
        if path.stem in by_stem:
            findings.error(path, f"two files share the stem {path.stem!r} (also {by_stem[path.stem].name})", defect)
            continue
        by_stem[path.stem] = path
        unique.append(path)
    return unique


def sub_folders(folder: Path, findings: Findings | None = None) -> list[Path]:
    """Visible sub-folders in natural order; stray files beside them are reported and ignored."""
    folders = []
    for entry in _entries(folder, findings):
        if is_hidden(entry):
            continue
        if entry.is_dir():
            folders.append(entry)
        elif findings is not None:
            findings.warn(entry, "ignored: a file where only folders are expected")
    return folders


def _describe_read_error(exc: Exception) -> str:
    text = str(exc)
    if "truncated" in text.lower():
        return "truncated image file"
    if isinstance(exc, Image.UnidentifiedImageError) or "cannot identify" in text:
        return "not an image file (cannot identify its format)"
    return f"unreadable image ({text})"


def inspect_image(path: Path, findings: Findings, defect: str | None = None) -> ImageInfo | None:
    """Open and decode ``path`` once (catching truncated files), note its mode; ``None`` if it cannot be read."""
    findings.image_read()
    try:
        with Image.open(path) as img:
            mode = img.mode
            size = img.size
            # load() decodes every pixel: the only way to catch a file truncated after its header.
            img.load()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        findings.error(path, _describe_read_error(exc), defect)
        return None
    if size[0] < 1 or size[1] < 1:
        findings.error(path, f"image has no pixels ({size[0]}x{size[1]})", defect)
        return None
    if mode != "RGB":
        findings.note(path, _MODE_NOTES.get(mode, f"mode {mode}, converted to RGB"), defect)
    return ImageInfo(path=path, size=size, mode=mode)


def inspect_images(paths: list[Path], findings: Findings, defect: str | None = None) -> list[ImageInfo]:
    infos = [inspect_image(p, findings, defect) for p in paths]
    return [info for info in infos if info is not None]


def read_normal_folder(folder: Path, findings: Findings, *, required: bool, what: str) -> list[ImageInfo]:
    """Inspect a folder of normal images; a missing or empty folder is an error when ``required``."""
    if not folder.is_dir():
        if required:
            findings.error(folder, f"missing folder: the {what} belong here")
        return []
    files = list_image_files(folder, findings)
    if not files:
        if required:
            findings.error(folder, f"empty folder: no {what}")
        else:
            findings.warn(folder, f"empty folder: no {what}")
    return inspect_images(files, findings)


def inspect_mask(
    path: Path,
    image: ImageInfo,
    findings: Findings,
    defect: str | None = None,
    *,
    expect_binary: bool = True,
) -> tuple[ImageInfo, float] | None:
    """Read a mask, check it against its image and return its info and anomalous fraction.

    Args:
        path: the mask file.
        image: the image it belongs to (sizes must match).
        findings: where problems go.
        defect: the defect type, for the report.
        expect_binary: warn when values are not 0/255 (``False`` for VisA, whose masks hold class ids by design).

    A mask is always read as ``> 0`` (the convention of every anomaly-detection reader); other values are
    reported, not refused.
    """
    try:
        with Image.open(path) as img:
            img.load()
            mode = img.mode
            size = img.size
            arr = np.asarray(img)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        findings.error(path, f"mask: {_describe_read_error(exc)}", defect)
        return None
    if size != image.size:
        findings.error(
            path,
            f"mask is {size[0]}x{size[1]} but its image {image.path.name} is {image.size[0]}x{image.size[1]}",
            defect,
        )
        return None
    if arr.ndim == 3:
        findings.note(path, f"mask has {arr.shape[-1]} channels; a pixel is anomalous if any colour is > 0", defect)
        # Same reduction as anogen.io.load_mask, so the coverage reported here is what training reads.
        arr = arr[..., :3].max(axis=-1) if arr.shape[-1] >= 3 else arr[..., 0]
    anomalous = arr > 0
    if expect_binary:
        values = np.unique(arr) if arr.dtype != np.uint8 else np.flatnonzero(np.bincount(arr.ravel(), minlength=256))
        nonzero = {int(v) for v in values if v != 0}
        if arr.dtype == bool or nonzero <= {255}:
            pass
        elif nonzero <= {1}:
            findings.note(path, "mask holds 0/1 values, binarised at > 0", defect)
        elif mode.startswith("I;16") and nonzero <= {65535}:
            findings.note(path, "16-bit mask, binarised at > 0", defect)
        else:
            findings.note(path, "non-binary mask (values other than 0/255), binarised at > 0", defect)
    coverage = float(anomalous.mean())
    if coverage == 0.0:
        findings.warn(path, "mask is empty (no pixel > 0)", defect)
    return ImageInfo(path=path, size=size, mode=mode), coverage


def read_defect_folders(
    category: Category,
    image_dirs: list[Path],
    mask_root: Path,
    findings: Findings,
    *,
    mask_suffixes: tuple[str, ...],
) -> None:
    """Add one defect type per folder of ``image_dirs`` to ``category``, its masks in ``mask_root/<folder name>``.

    Two folders whose sanitised names collide are a problem, not a silent merge: the second one is skipped.
    """
    for image_dir in image_dirs:
        defect = safe_name(image_dir.name)
        if defect in category.defects:
            findings.error(image_dir, f"two defect folders map to the same name {defect!r}", defect)
            continue
        masks = mask_root / image_dir.name
        samples = pair_defect_images(image_dir, masks, findings, defect, mask_suffixes=mask_suffixes)
        category.defects[defect] = DefectType(defect, samples)


def pair_defect_images(
    image_dir: Path,
    mask_dir: Path,
    findings: Findings,
    defect: str,
    *,
    mask_suffixes: tuple[str, ...] = ("_mask",),
    expect_binary: bool = True,
) -> list[DefectSample]:
    """Pair every image of ``image_dir`` with its mask in ``mask_dir`` by stem.

    Args:
        image_dir: folder of defect images.
        mask_dir: folder of masks; mask ``<stem><suffix>.<ext>`` belongs to image ``<stem>.<ext>``.
        findings: where problems go.
        defect: the defect type's name.
        mask_suffixes: accepted stem suffixes of masks, tried in order (``""`` means the same stem).
        expect_binary: see :func:`inspect_mask`.

    Returns:
        The usable (readable, paired, same-size) samples in natural filename order. Everything else is a
        problem: an image without mask, a mask without image, an empty folder.
    """
    images = list_image_files(image_dir, findings, defect)
    if not images:
        findings.error(image_dir, "empty defect folder: no images", defect)
    masks: dict[str, Path] = {}
    orphans: list[Path] = []
    if mask_dir.is_dir():
        image_stems = {p.stem for p in images}
        for mask in list_image_files(mask_dir, findings, defect):
            key = _mask_key(mask.stem, mask_suffixes, image_stems)
            if key is None:
                orphans.append(mask)
            elif key in masks:
                findings.error(mask, f"a second mask for image {key!r} (also {masks[key].name})", defect)
            else:
                masks[key] = mask
    elif images:
        findings.error(mask_dir, f"missing mask folder: the {len(images)} images of {image_dir.name}/ need masks here",
                       defect)
        return []
    for mask in orphans:
        findings.error(mask, f"mask without an image (no {_expected_image(mask, mask_suffixes)} in {image_dir})",
                       defect)
    samples: list[DefectSample] = []
    for path in images:
        info = inspect_image(path, findings, defect)
        mask = masks.get(path.stem)
        if mask is None:
            expected = f"{path.stem}{mask_suffixes[0]}.png"
            findings.error(path, f"defect image without a mask (expected {mask_dir / expected})", defect)
            continue
        if info is None:
            continue
        checked = inspect_mask(mask, info, findings, defect, expect_binary=expect_binary)
        if checked is None:
            continue
        mask_info, coverage = checked
        samples.append(DefectSample(image=info, mask=mask_info, stem=path.stem, mask_coverage=coverage))
    return samples


def _mask_key(mask_stem: str, suffixes: tuple[str, ...], image_stems: set[str]) -> str | None:
    for suffix in suffixes:
        if suffix and mask_stem.endswith(suffix):
            key = mask_stem[: -len(suffix)]
        elif not suffix:
            key = mask_stem
        else:
            continue
        if key in image_stems:
            return key
    return None


def _expected_image(mask: Path, suffixes: tuple[str, ...]) -> str:
    for suffix in suffixes:
        if suffix and mask.stem.endswith(suffix):
            return f"{mask.stem[: -len(suffix)]}.*"
    return f"{mask.stem}.*"


# ----------------------------------------------------------------------------------------------- report


@dataclass(frozen=True)
class DefectRow:
    """One line of the ``data check`` table."""

    name: str
    images: int
    train: int
    held_out: int
    sizes: list[tuple[int, int]]
    mean_coverage: float | None
    errors: int
    warnings: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "images": self.images,
            "train": self.train,
            "held_out": self.held_out,
            "sizes": [f"{w}x{h}" for w, h in self.sizes],
            "mean_mask_coverage": self.mean_coverage,
            "errors": self.errors,
            "warnings": self.warnings,
        }


@dataclass
class CheckReport(ProblemsMixin):
    """What ``anogen data check`` prints: the category, a row per defect type and every problem."""

    category: Category
    rows: list[DefectRow] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    splits: dict[str, dict[str, list[str]]] = field(default_factory=dict)
    shots: int | None = None
    # Filled in by the caller from anogen.config.choose_preset: readers and checks know nothing of presets.
    preset: str | None = None
    preset_reason: str | None = None

    def to_dict(self) -> dict[str, Any]:
        cat = self.category
        size = cat.image_size
        return {
            "category": cat.name,
            "root": str(cat.root),
            "format": cat.dataset_format,
            "kind": cat.kind.value if cat.kind is not None else None,
            "preset": self.preset,
            "preset_reason": self.preset_reason,
            "image_size": f"{size[0]}x{size[1]}" if size else None,
            "grayscale": cat.is_grayscale,
            "train_normals": len(cat.train_normals),
            "test_normals": len(cat.test_normals),
            "shots": self.shots,
            "defects": [row.to_dict() for row in self.rows],
            "splits": self.splits,
            "problems": [
                {"severity": p.severity.value, "path": str(p.path) if p.path else None, "message": p.message,
                 "defect": p.defect}
                for p in self.problems
            ],
            "errors": len(self.errors),
            "warnings": len(self.warnings),
            "ok": not self.errors,
        }


def check_category(category: Category, shots: int | None = None) -> CheckReport:
    """Summarise a category for ``data check``: per defect type counts, split, sizes, coverage and problems.

    Args:
        category: as a reader returned it (its ``problems`` are carried over).
        shots: training images per defect type (``None``: the default ``floor(N/3)``, at least 1).

    Split findings join the problems: a defect type with one image holds nothing out (warning); ``shots``
    above a defect type's image count is an error.
    """
    problems = list(category.problems)
    rows: list[DefectRow] = []
    splits: dict[str, dict[str, list[str]]] = {}
    for name, defect in category.defects.items():
        n = len(defect.samples)
        train = held = 0
        if n:
            try:
                split = few_shot_split(defect, shots)
            except DataError as exc:
                problems.append(Problem(Severity.ERROR, None, f"defect type {name!r}: {exc.message}", name))
            else:
                train, held = len(split.train), len(split.held_out)
                splits[name] = split.to_dict()
                if held == 0:
                    why = "only 1 image" if n == 1 else f"--shots {shots} uses all {n} images"
                    problems.append(
                        Problem(Severity.WARNING, None, f"defect type {name!r}: {why}, nothing is held out", name)
                    )
        sizes = sorted({s.image.size for s in defect.samples})
        coverages = [s.mask_coverage for s in defect.samples if s.mask_coverage is not None]
        mine = [p for p in problems if p.defect == name]
        rows.append(
            DefectRow(
                name=name,
                images=n,
                train=train,
                held_out=held,
                sizes=sizes,
                mean_coverage=float(np.mean(coverages)) if coverages else None,
                errors=sum(p.severity is Severity.ERROR for p in mine),
                warnings=sum(p.severity is Severity.WARNING for p in mine),
            )
        )
    problems.sort(key=lambda p: (p.severity is not Severity.ERROR, natural_key(str(p.path or ""))))
    return CheckReport(
        category=category,
        rows=rows,
        problems=problems,
        splits=splits,
        shots=shots,
    )


__all__ = [
    "IMAGE_SUFFIXES",
    "CheckReport",
    "DefectRow",
    "Findings",
    "check_category",
    "default_shots",
    "inspect_image",
    "inspect_images",
    "inspect_mask",
    "list_image_files",
    "pair_defect_images",
    "read_normal_folder",
]
