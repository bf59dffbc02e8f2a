"""The consumers' side of a prior: ``prior.json`` read back (:class:`PriorRecord`, :func:`load_prior`), one
image's object mask, the background images, where the prior files an image (:func:`split_of`), and the
on-object check of a defect mask."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from anogen.data.model import Category, CategoryKind, ImageInfo
from anogen.errors import InputError
from anogen.io import load_mask, natural_key, safe_name
from anogen.priors.params import METHOD, PRIOR_SCHEMA_VERSION, Role


def fraction_on_object(mask: np.ndarray, object_mask: np.ndarray) -> float:
    """Share of a defect mask's pixels that lie on the object.

    Args:
        mask (`np.ndarray`): boolean (or 0/255) defect mask ``(h, w)``.
        object_mask (`np.ndarray`): boolean object mask; resized nearest-neighbour to ``mask``'s shape
            when the two differ (a synth mask at model resolution against a full-size object mask).

    Returns:
        `float`: in [0, 1]; 0.0 for an empty mask (an empty mask lies nowhere).
    """
    mask = np.asarray(mask) > 0
    obj = _resize_bool(np.asarray(object_mask) > 0, mask.shape)
    area = int(mask.sum())
    if area == 0:
        return 0.0
    return float(np.logical_and(mask, obj).sum()) / area


def plausible_location(mask: np.ndarray, object_mask: np.ndarray | None, min_fraction: float = 0.5) -> bool:
    """Whether a defect mask lies on the object (at least ``min_fraction`` of its pixels).

    A defect on an object lies on the object; ``synth``/``mask`` use this behind a flag to reject samples
    (reason ``off_object``). ``object_mask`` None (texture categories, no prior) accepts every non-empty mask.
    """
    if not np.any(np.asarray(mask) > 0):
        return False
    if object_mask is None:
        return True
    return fraction_on_object(mask, object_mask) >= min_fraction


def _resize_bool(mask: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    if mask.shape == tuple(shape[:2]):
        return mask
    img = Image.fromarray(mask.astype(np.uint8) * 255).resize((shape[1], shape[0]), Image.NEAREST)
    return np.asarray(img) > 0


@dataclass(frozen=True)
class PriorImage:
    """One row of ``prior.json``: a source image and what the prior wrote for it (paths relative to the folder)."""

    role: Role
    split: str
    stem: str
    source: str
    sha256: str
    object: str | None = None
    background: str | None = None
    object_fraction: float | None = None
    fallback: bool = False
    defect: str | None = None
    mask_sha256: str | None = None


@dataclass(frozen=True)
class PriorRecord:
    """``prior.json`` of one category, read back.

    Attributes:
        folder: ``DIR/<category>``; every relative path in the record resolves against it.
        kind: ``object`` or ``texture``.
        images: one row per source image, in the order they were processed.
    """

    folder: Path
    category: str
    kind: str
    kind_source: str
    method: str
    params: dict[str, Any]
    source: dict[str, Any]
    images: tuple[PriorImage, ...]
    defects: dict[str, dict[str, Any]]
    warnings: tuple[str, ...] = ()
    schema_version: int = PRIOR_SCHEMA_VERSION
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def is_object(self) -> bool:
        return self.kind == CategoryKind.OBJECT.value

    def find(self, split: str, stem: str) -> PriorImage | None:
        split = _safe_split(split)
        stem = safe_name(stem)
        for row in self.images:
            if row.split == split and row.stem == stem:
                return row
        return None

    def find_source(self, path: str | Path) -> PriorImage | None:
        """The row of a source image, by its path (absolute, or relative to the source category root)."""
        path = Path(path)
        root = Path(self.source.get("root", ""))
        candidates = {str(path)}
        try:
            candidates.add(path.resolve().relative_to(root.resolve()).as_posix())
        except (ValueError, OSError):
            pass
        for row in self.images:
            if row.source in candidates or str(root / row.source) in candidates:
                return row
        return None

    def location_map(self, defect: str | None = None) -> np.ndarray | None:
        """The 64x64 location map of one defect type (or of all, ``defect=None``), if written."""
        name = "location.npy" if defect is None else f"location/{safe_name(defect)}.npy"
        path = self.folder / name
        return np.load(path) if path.is_file() else None


def load_prior(prior_dir: str | Path, category: str) -> PriorRecord:
    """Read ``prior_dir/<category>/prior.json``.

    Raises:
        InputError: no prior for this category, or a prior of a newer schema.
    """
    folder = Path(prior_dir) / safe_name(category)
    path = folder / "prior.json"
    if not path.is_file():
        # Accept the category folder itself as prior_dir, like other commands accept any level.
        if (Path(prior_dir) / "prior.json").is_file():
            folder = Path(prior_dir)
            path = folder / "prior.json"
        else:
            raise InputError(
                f"no prior for category {category!r} in {prior_dir} (missing {path})",
                hint=f"run `anogen prior DATA --category {category} --out {prior_dir}` first",
            )
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise InputError(f"{path}: unreadable prior record ({exc})") from exc
    version = int(raw.get("schema_version", 0))
    if version > PRIOR_SCHEMA_VERSION:
        raise InputError(
            f"{path}: prior schema_version {version} is newer than this anogen reads ({PRIOR_SCHEMA_VERSION})",
            hint="upgrade anogen or rerun `anogen prior`",
        )
    names = {f.name for f in dataclasses.fields(PriorImage)}
    images = tuple(PriorImage(**{k: v for k, v in row.items() if k in names}) for row in raw.get("images", []))
    return PriorRecord(
        folder=folder,
        category=raw.get("category", category),
        kind=raw["kind"],
        kind_source=raw.get("kind_source", "dataset"),
        method=raw.get("method", METHOD),
        params=raw.get("params", {}),
        source=raw.get("source", {}),
        images=images,
        defects=raw.get("defects", {}),
        warnings=tuple(raw.get("warnings", [])),
        schema_version=version,
        raw=raw,
    )


def object_mask_for(prior_dir: str | Path, category: str, split: str, stem: str) -> np.ndarray | None:
    """The object mask of one source image as a boolean ``(H, W)`` array.

    Returns ``None`` for texture categories and for images the prior does not cover (callers then skip the
    plausibility check rather than reject).
    """
    record = load_prior(prior_dir, category)
    if not record.is_object:
        return None
    row = record.find(split, stem)
    if row is None or row.object is None:
        return None
    return load_mask(record.folder / row.object)


def background_paths(prior_dir: str | Path, category: str, roles: Sequence[Role] = ("train",)) -> list[Path]:
    """Background images I_b of the category's normal images, sorted (synth cycles them by sample id).

    Args:
        roles: which normals: ``("train",)`` (default; keeps test images out of generation) or
            ``("train", "test")``. When the category has no training normals, the test normals are used.

    Returns:
        `list[Path]`: absolute paths, in natural order of (split, stem); empty for texture categories.
    """
    record = load_prior(prior_dir, category)
    if not record.is_object:
        return []
    rows = [r for r in record.images if r.role in roles and r.background]
    if not rows:
        rows = [r for r in record.images if r.role in ("train", "test") and r.background]
    rows.sort(key=lambda r: (natural_key(r.split), natural_key(r.stem)))
    return [record.folder / r.background for r in rows if r.background]


def _safe_split(split: str) -> str:
    return "/".join(safe_name(part) for part in Path(split).as_posix().split("/") if part not in ("", "."))


def split_of(category: Category, info: ImageInfo, fallback: str) -> str:
    """The split folder under which the prior files an image: its folder relative to the category root
    (``train/good``, ``test/crack``), or ``fallback`` (``train/good``, ``test/good``, ``test/<defect>``) for an
    image outside the root. Consumers pass it with the image's stem to :func:`object_mask_for`."""
    try:
        rel = info.path.parent.resolve().relative_to(category.root.resolve()).as_posix()
    except (ValueError, OSError):
        return fallback
    return _safe_split(rel) if rel not in ("", ".") else fallback
