"""The one model every reader produces: a category with its normal images and its defect types.

Readers (``mvtec.py``, ``mvtec2.py``, ``visa.py``, ``folder.py``) parse a tree into a :class:`Category`
and validate it; they never decide splits (``split.py`` does) and never load models.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from pathlib import Path


class Severity(str, enum.Enum):
    WARNING = "warning"
    ERROR = "error"


class CategoryKind(str, enum.Enum):
    """Objects get background compensation and object masks; textures do not."""

    OBJECT = "object"
    TEXTURE = "texture"


@dataclass(frozen=True)
class Problem:
    """One finding of a reader: a path and what is wrong with it."""

    severity: Severity
    path: Path | None
    message: str
    defect: str | None = None  # the defect type the finding belongs to, if any (for per-defect tables)

    def __str__(self) -> str:
        where = f"{self.path}: " if self.path is not None else ""
        return f"{self.severity.value}: {where}{self.message}"


@dataclass(frozen=True)
class ImageInfo:
    """What a reader learnt about one image file without keeping its pixels."""

    path: Path
    size: tuple[int, int]  # (width, height)
    mode: str  # PIL mode as stored on disk, e.g. "RGB", "L", "RGBA", "I;16"


@dataclass(frozen=True)
class DefectSample:
    """An anomalous image and its ground-truth mask (``mask`` is None where the data set has none)."""

    image: ImageInfo
    mask: ImageInfo | None
    stem: str
    mask_coverage: float | None = None  # fraction of the mask's pixels that are anomalous (> 0)


@dataclass
class DefectType:
    """All images of one defect type, in natural filename order."""

    name: str
    samples: list[DefectSample] = field(default_factory=list)


class ProblemsMixin:
    """``errors`` and ``warnings`` of anything that holds a ``problems`` list (a category, a check report)."""

    problems: list[Problem]

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity is Severity.ERROR]

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.problems if p.severity is Severity.WARNING]


@dataclass
class Category(ProblemsMixin):
    """A category of one data set, as read from disk.

    Attributes:
        name: category name (sanitised for use as a folder name).
        root: the category folder.
        dataset_format: ``mvtec``, ``mvtec2``, ``visa``, ``folder`` or ``toy``.
        train_normals: normal images meant for training (e.g. ``train/good``).
        test_normals: normal images of the test split (e.g. ``test/good``).
        defects: defect types by name, in sorted order.
        kind: object or texture (from the preset or data set knowledge; ``None`` if unknown).
        problems: everything the reader found, warnings and errors.
    """

    name: str
    root: Path
    dataset_format: str
    train_normals: list[ImageInfo] = field(default_factory=list)
    test_normals: list[ImageInfo] = field(default_factory=list)
    defects: dict[str, DefectType] = field(default_factory=dict)
    kind: CategoryKind | None = None
    problems: list[Problem] = field(default_factory=list)

    @property
    def image_size(self) -> tuple[int, int] | None:
        """The most common (width, height) of the category's images."""
        sizes: dict[tuple[int, int], int] = {}
        for info in self.all_images():
            sizes[info.size] = sizes.get(info.size, 0) + 1
        return max(sizes, key=lambda s: sizes[s]) if sizes else None

    @property
    def is_grayscale(self) -> bool:
        modes = {info.mode for info in self.all_images()}
        return bool(modes) and modes <= {"L", "I;16", "I", "1", "LA"}

    def all_images(self) -> list[ImageInfo]:
        images = [*self.train_normals, *self.test_normals]
        for defect in self.defects.values():
            images.extend(s.image for s in defect.samples)
        return images
