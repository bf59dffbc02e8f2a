"""Progress reporting from library code without any terminal dependency.

Long-running library functions accept ``progress: ProgressCallback | None`` and call it with
:class:`ProgressEvent` objects; the CLI renders them, notebooks may pass their own callable.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class ProgressEvent:
    """``completed`` of ``total`` units of the task named ``task``; ``info`` holds extra figures (loss, ETA...)."""

    task: str
    completed: int
    total: int | None = None
    info: dict[str, Any] = field(default_factory=dict)


ProgressCallback = Callable[[ProgressEvent], None]


def report(progress: ProgressCallback | None, task: str, completed: int, total: int | None = None, **info: Any) -> None:
    if progress is not None:
        progress(ProgressEvent(task, completed, total, info))
