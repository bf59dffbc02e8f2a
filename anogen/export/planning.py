"""Planning an export: every output file (:class:`PlannedFile`), its source and how it is derived, and the
fixed-width stems the layouts number their folders with. The format planners build an :class:`ExportPlan` from these.

No torch here.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from PIL import Image

from anogen.export.items import AnomalyItem, CategoryItems, NormalItem, Provenance

# A string as json.dumps writes it (ASCII, escaped): the export spells its JSON lines out, one per file.
json_str = json.encoder.encode_basestring_ascii  # type: ignore[attr-defined]
# Bump when the way a file is rendered changes (resampling, mode handling): older exports then rebuild.
RENDER_VERSION = 1


# ------------------------------------------------------------------------------------------ planning


def stem_width(count: int) -> int:
    """Fixed stem width for a folder of ``count`` files: 3 like MVTec, more when needed."""
    return max(3, len(str(max(count - 1, 0))))


def numbered(count: int) -> list[str]:
    width = stem_width(count)
    return [f"{i:0{width}d}" for i in range(count)]


@dataclass(frozen=True)
class PlannedFile:
    """One output image or mask: where it goes, what it is made from, and how.

    ``size`` is the output (width, height) or None to keep the source's; ``mode`` is ``RGB`` or ``L``
    for images; masks are always ``L`` 0/255 at their image's size (``size`` is then that size).
    """

    rel: str
    role: Literal["image", "mask"]
    src: Path
    provenance: Provenance
    size: tuple[int, int] | None
    mode: str
    split: str | None = None
    label: str | None = None
    defect: str | None = None
    category: str | None = None
    pair: str | None = None  # the mask of an image, the image of a mask

    def fingerprint(self, src_sha256: str, link: str) -> str:
        """sha256 of ``json.dumps(spec, sort_keys=True)`` of what makes this file: its path, role, source bytes,
        size, mode, link mode, render version (and the source path of a symlink).

        Spelled out rather than built with ``json.dumps``: an export computes one per file; the bytes are the same
        (``json``'s own string escaping, its default separators, keys in sorted order).
        """
        size = f"[{int(self.size[0])}, {int(self.size[1])}]" if self.size else "null"
        src = json_str(str(self.src)) if link == "symlink" else "null"
        text = (
            f'{{"link": {json_str(link)}, "mode": {json_str(self.mode)}, "rel": {json_str(self.rel)}, '
            f'"render": {RENDER_VERSION}, "role": {json_str(self.role)}, "size": {size}, "src": {src}, '
            f'"src_sha256": {json_str(src_sha256)}}}'
        )
        return hashlib.sha256(text.encode()).hexdigest()


@dataclass(frozen=True)
class GeneratedFile:
    """A file the export writes from the plan itself (COCO JSON, CSV, YAML); ``make`` returns its bytes."""

    rel: str
    make: Callable[[], bytes]
    role: str = "metadata"


@dataclass
class ExportPlan:
    """Every file of an export. ``roots`` are the folders the export owns (stray files there are removed)."""

    format: str
    files: list[PlannedFile]
    generated: list[GeneratedFile]
    roots: list[str]
    categories: list[CategoryItems]
    summary: dict[str, Any] = field(default_factory=dict)
    depends: list[Path] = field(default_factory=list)  # sources only generated files read (COCO masks)


def image_target(item_path: Path, size: tuple[int, int] | None) -> tuple[int, int]:
    """The output size of an image: ``size`` or, for ``--size native``, the file's own size."""
    if size is not None:
        return size
    with Image.open(item_path) as img:
        return img.size


def plan_pair(
    item: AnomalyItem,
    image_rel: str,
    mask_rel: str,
    cat: CategoryItems,
    *,
    split: str = "test",
    label: str = "anomaly",
) -> list[PlannedFile]:
    """The image and mask entries of one anomalous item; the mask gets its image's output size."""
    size = image_target(item.image, cat.target_size)
    mode = "L" if cat.grayscale else "RGB"
    common = {
        "split": split,
        "label": label,
        "defect": cat.defect_names.get(item.defect, item.defect),
        "category": cat.source_name,
    }
    return [
        PlannedFile(image_rel, "image", item.image, item.provenance, size, mode, pair=mask_rel, **common),
        PlannedFile(mask_rel, "mask", item.mask, item.mask_provenance, size, "L", pair=image_rel, **common),
    ]


def plan_normal(item: NormalItem, rel: str, cat: CategoryItems, *, split: str) -> PlannedFile:
    """The entry of one real normal image."""
    size = image_target(item.image, cat.target_size)
    mode = "L" if cat.grayscale else "RGB"
    return PlannedFile(
        rel, "image", item.image, item.provenance, size, mode, split=split, label="normal", category=cat.source_name
    )

