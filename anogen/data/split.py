"""The few-shot split: which real defect images train an adapter and which stay held out.

The default follows the paper's protocol without its off-by-one: the first ``floor(N/3)`` images of a defect
type in natural filename order train (at least one), the rest are held out for evaluation. The reference code
rounds up, so its last training image can also be a test image; we never let the two sets overlap.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from anogen.data.model import DefectSample, DefectType
from anogen.errors import DataError
from anogen.io import natural_key


@dataclass(frozen=True)
class Split:
    """Training and held-out samples of one defect type (disjoint; together every sample once).

    Attributes:
        train: the samples an adapter learns from, in natural filename order.
        held_out: the samples nothing may train on or be selected with, in natural filename order.
    """

    train: list[DefectSample] = field(default_factory=list)
    held_out: list[DefectSample] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """The stems of both sets, as outputs record them (``adapter.json`` ``split``)."""
        return {"train": [s.stem for s in self.train], "held_out": [s.stem for s in self.held_out]}


def default_shots(n: int) -> int:
    """``floor(n / 3)``, at least 1 (0 only when there is no image at all)."""
    if n <= 0:
        return 0
    return max(1, n // 3)


def few_shot_split(defect: DefectType, shots: int | None = None) -> Split:
    """Split one defect type's samples into training and held-out images.

    Args:
        defect (`DefectType`): the defect type, as a reader produced it.
        shots (`int`, *optional*): how many images train. ``None`` is ``floor(N/3)``, at least 1; a defect
            type with a single image therefore trains on it and holds nothing out.

    Returns:
        `Split`: the first ``shots`` samples in natural filename order train, the rest are held out.

    Raises:
        DataError: the defect type has no images, or ``shots`` is below 1 or above the number of images.

    Example:
        >>> from pathlib import Path
        >>> from anogen.data.model import DefectSample, DefectType, ImageInfo
        >>> samples = [DefectSample(ImageInfo(Path(f"{i}.png"), (8, 8), "RGB"), None, str(i)) for i in range(7)]
        >>> split = few_shot_split(DefectType("crack", samples))
        >>> [s.stem for s in split.train], len(split.held_out)
        (['0', '1'], 5)
    """
    ordered = sorted(defect.samples, key=lambda s: natural_key(s.stem))
    n = len(ordered)
    if n == 0:
        raise DataError(f"defect type {defect.name!r} has no images to train on")
    if shots is None:
        shots = default_shots(n)
    elif shots < 1:
        raise DataError(f"--shots must be at least 1 (got {shots})")
    elif shots > n:
        raise DataError(
            f"--shots {shots} is more than the {n} image{'s' if n != 1 else ''} of defect type {defect.name!r}",
            hint=f"use --shots {n} or fewer",
        )
    return Split(train=ordered[:shots], held_out=ordered[shots:])
