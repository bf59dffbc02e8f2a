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


def current_dist() -> Dist:
    """Rank and world size from the launcher's environment (``accelerate launch``, ``torchrun``).

    With ``WORLD_SIZE > 1`` the process group is set up through :class:`accelerate.PartialState` (gloo on CPU),
    which needs ``MASTER_ADDR`` and ``MASTER_PORT`` as well; barriers go through it.
    """
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world <= 1:
        return Dist()
    import torch
    from accelerate import PartialState

    state = PartialState(cpu=not torch.cuda.is_available())
    return Dist(rank=state.process_index, world=state.num_processes, barrier=state.wait_for_everyone,
                device=state.device)


__all__ = ["Dist", "current_dist"]
