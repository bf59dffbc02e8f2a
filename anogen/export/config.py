"""The settings of ``anogen export``: :class:`ExportConfig` and the ``--size`` parser."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from anogen.errors import InputError

ExportFormat = Literal["mvtec", "coco", "folder", "visa"]
LinkMode = Literal["copy", "hardlink", "symlink"]
FORMATS: tuple[str, ...] = ("mvtec", "coco", "folder", "visa")
LINK_MODES: tuple[str, ...] = ("copy", "hardlink", "symlink")


@dataclass(frozen=True)
class ExportConfig:
    """How ``anogen export`` writes a data set tree.

    Args:
        format (`str`, defaults to `"mvtec"`): ``mvtec``, ``coco``, ``folder`` (anomalib Folder) or ``visa``.
        out (`Path`): the export root.
        data (`Path`, *optional*): the real data set (root or category folder); required except for ``coco``.
        data_format (`str`, defaults to `"auto"`): layout of ``data`` (``auto``, ``mvtec``, ``mvtec2``, ``visa``,
            ``folder``).
        category (`str`, *optional*): export only this category of the synth folders.
        size (`str | int`, defaults to `"source"`): ``source`` (the real category's image size), ``native``
            (every file keeps its own size) or a side length in pixels.
        link (`str`, defaults to `"copy"`): how files that need no conversion are placed: ``copy``,
            ``hardlink`` (falls back to copy across file systems) or ``symlink``.
        force (`bool`, defaults to False): rebuild even if up to date; write into a foreign non-empty folder.
        include_real_test (`bool`, defaults to False): add the real held-out anomalies (never the training
            shots) to the test set of each exported defect type.
        coco_per_mask (`bool`, defaults to False): COCO: one annotation per mask instead of per connected
            component.
        workers (`int`, defaults to 0): worker processes converting (resizing, re-encoding) and copying files
            when many are left; 0 uses every core this process may run on, 1 does everything in this
            process. Not part of the result: any value writes the same tree.
    """

    format: str = "mvtec"
    out: Path = Path("export")
    data: Path | None = None
    data_format: str = "auto"
    category: str | None = None
    size: str | int = "source"
    link: str = "copy"
    force: bool = False
    include_real_test: bool = False
    coco_per_mask: bool = False
    workers: int = 0

    def validate(self) -> None:
        if self.format not in FORMATS:
            raise InputError(f"unknown export format {self.format!r}", hint=f"choose one of {', '.join(FORMATS)}")
        if self.link not in LINK_MODES:
            raise InputError(f"unknown link mode {self.link!r}", hint=f"choose one of {', '.join(LINK_MODES)}")
        if isinstance(self.size, str) and self.size not in ("source", "native"):
            raise InputError(f"--size must be source, native or a number of pixels, not {self.size!r}")
        if isinstance(self.size, int) and not 8 <= self.size <= 16384:
            raise InputError(f"--size {self.size} is out of range (8..16384 pixels)")
        if self.workers < 0:
            raise InputError(f"workers must be 0 (every core) or more, not {self.workers}")
        if self.data is None and self.format != "coco":
            raise InputError(
                f"--format {self.format} needs the real data set for its normal images",
                hint="pass --data DATA (the category folder or data set root the adapters were trained on)",
            )

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in data.items()}


def parse_size(text: str | int) -> str | int:
    """``"source"``/``"native"`` stay strings, ``"256"`` becomes 256; anything else is an :class:`InputError`."""
    if isinstance(text, int):
        return text
    value = text.strip().lower()
    if value in ("source", "native"):
        return value
    try:
        return int(value)
    except ValueError:
        raise InputError(f"--size must be source, native or a number of pixels, not {text!r}") from None
