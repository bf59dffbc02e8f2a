"""The inputs of a build: the category read and checked, its kind decided (object or texture), one job per
source image, and image and mask files read with a DataError that names the file."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image, UnidentifiedImageError

from anogen.data.model import Category, CategoryKind, ImageInfo
from anogen.errors import DataError
from anogen.io import load_mask, load_rgb, safe_name
from anogen.priors.params import PriorParams, Role
from anogen.priors.record import split_of
from anogen.priors.segmentation import estimate_object_mask
from anogen.progress import ProgressCallback


def read_category_checked(
    path: str | Path,
    *,
    category: str | None = None,
    dataset_format: str = "auto",
    progress: ProgressCallback | None = None,
) -> Category:
    """Read a category with ``anogen.data.read_category`` and refuse one with errors (unreadable files...).

    Raises:
        DataError: one line naming the first problem's file, with the number of further problems.
    """
    from anogen.data import read_category

    cat = read_category(path, category=category, dataset_format=dataset_format, progress=progress)
    errors = cat.errors
    if errors:
        more = f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})" if len(errors) > 1 else ""
        first = errors[0]
        where = f"{first.path}: " if first.path is not None else ""
        raise DataError(f"{where}{first.message}{more}", hint=f"`anogen data check {path}` lists every problem")
    return cat


def resolve_kind(
    category: Category,
    requested: Literal["auto", "object", "texture"] = "auto",
    *,
    preset_bcm: bool | None = None,
    params: PriorParams | None = None,
) -> tuple[str, str, list[str]]:
    """Decide object or texture: the flag, else the data set's knowledge, else the preset, else the images.

    A request for object priors on a category the data set knows to be a texture is refused with a
    warning (object masks of a texture are meaningless): the prior is written as a texture.

    Returns:
        `(kind, source, warnings)`.
    """
    warnings: list[str] = []
    known = category.kind.value if category.kind is not None else None
    if requested == "object" and known == CategoryKind.TEXTURE.value:
        warnings.append(
            f"category {category.name!r} is a texture: object priors (masks, backgrounds, BCM) do not apply; "
            "writing a texture prior without object masks"
        )
        return known, "dataset", warnings
    if requested in ("object", "texture"):
        return requested, "flag", warnings
    if known is not None:
        if known == CategoryKind.TEXTURE.value and preset_bcm:
            warnings.append(
                f"the preset turns BCM on but category {category.name!r} is a texture: "
                "no object masks or backgrounds are written; switch BCM off for it (`--bcm off`)"
            )
        return known, "dataset", warnings
    if preset_bcm is not None:
        return ("object" if preset_bcm else "texture"), "preset", warnings
    guess = _guess_kind(category, params or PriorParams())
    warnings.append(
        f"kind of category {category.name!r} unknown; guessed {guess!r} from its images (pass --kind to set it)"
    )
    return guess, "guessed", warnings


def _guess_kind(category: Category, params: PriorParams, samples: int = 5) -> str:
    """An object stands out from its border on most normal images; a texture does not."""
    normals = [*category.train_normals, *category.test_normals]
    if not normals:
        return CategoryKind.TEXTURE.value
    step = max(1, len(normals) // samples)
    fractions = []
    for info in normals[::step][:samples]:
        mask = estimate_object_mask(_read_image(info.path), params)
        fractions.append(float(mask.mean()))
    median = float(np.median(fractions))
    # Texture noise that survives the 4-sigma threshold and the opening stays far below a few percent.
    return CategoryKind.OBJECT.value if 0.02 <= median <= 0.98 else CategoryKind.TEXTURE.value


def _read_image(path: Path) -> np.ndarray:
    try:
        return np.asarray(load_rgb(path))
    except (OSError, UnidentifiedImageError, ValueError) as exc:
        raise DataError(f"{path}: unreadable image ({exc})", path=path) from exc


def _check_header(path: Path) -> None:
    """Open an image's header only: a dry run finds unreadable files without decoding pixels."""
    try:
        with Image.open(path) as img:
            img.verify()
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as exc:
        raise DataError(f"{path}: unreadable image ({exc})", path=path) from exc


def _read_mask(path: Path) -> np.ndarray:
    try:
        return load_mask(path)
    except (OSError, UnidentifiedImageError, ValueError) as exc:
        raise DataError(f"{path}: unreadable mask ({exc})", path=path) from exc


def _source_rel(category: Category, path: Path) -> str:
    try:
        return path.resolve().relative_to(category.root.resolve()).as_posix()
    except (ValueError, OSError):
        return str(path)


@dataclass(frozen=True)
class _Job:
    role: Role
    split: str
    stem: str
    info: ImageInfo
    defect: str | None = None
    mask: ImageInfo | None = None


def _jobs(category: Category) -> list[_Job]:
    jobs: list[_Job] = []
    for role, infos, fallback in (
        ("train", category.train_normals, "train/good"),
        ("test", category.test_normals, "test/good"),
    ):
        for info in infos:
            jobs.append(_Job(role, split_of(category, info, fallback), safe_name(info.path.stem), info))  # type: ignore[arg-type]
    for name in sorted(category.defects):
        defect = category.defects[name]
        for sample in defect.samples:
            split = split_of(category, sample.image, f"test/{safe_name(name)}")
            jobs.append(_Job("defect", split, safe_name(sample.stem), sample.image, safe_name(name), sample.mask))
    seen: dict[tuple[str, str], Path] = {}
    for job in jobs:
        key = (job.split, job.stem)
        if key in seen:
            raise DataError(
                f"two images map to the same prior file {job.split}/{job.stem}.png: {seen[key]} and {job.info.path}",
                path=job.info.path,
            )
        seen[key] = job.info.path
    return jobs
