"""Rank and world size of this process: the one place that reads the launcher's ``RANK`` / ``WORLD_SIZE`` /
``LOCAL_RANK`` environment (``accelerate launch``, ``torchrun``), ``WORLD_SIZE`` itself and the rest through
:class:`accelerate.PartialState`. No torch at import: the CLI may ask for them before it needs a model."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


@dataclass
class Dist:
    """This process's place among the processes sharing a run."""

    rank: int = 0
    world: int = 1
    barrier: Callable[[], None] = lambda: None
    device: torch.device | None = None


def launcher_rank() -> int:
    """This process's rank as the launcher set it (0 without a launcher); sets nothing up."""
    return int(os.environ.get("RANK", "0") or 0)


def launcher_world_size() -> int:
    """How many processes the launcher started (1 without a launcher); sets nothing up."""
    return int(os.environ.get("WORLD_SIZE", "1") or 1)


def is_main_process() -> bool:
    """Whether this process speaks for the run (rank 0): under a launcher only it prints and writes summaries."""
    return launcher_rank() == 0


def current_dist() -> Dist:
    """Rank and world size from the launcher's environment (``accelerate launch``, ``torchrun``).

    With ``WORLD_SIZE > 1`` the process group is set up through :class:`accelerate.PartialState` (gloo on CPU),
    which needs ``MASTER_ADDR`` and ``MASTER_PORT`` as well; barriers go through it.
    """
    if launcher_world_size() <= 1:
        return Dist()
    import torch
    from accelerate import PartialState

    state = PartialState(cpu=not torch.cuda.is_available())
    return Dist(rank=state.process_index, world=state.num_processes, barrier=state.wait_for_everyone,
                device=state.device)


__all__ = ["Dist", "current_dist", "is_main_process", "launcher_rank", "launcher_world_size"]
