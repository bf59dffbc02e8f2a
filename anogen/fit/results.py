"""What a fit plans and returns: :class:`FitPlan` (one :class:`DefectPlan` per adapter), the output of
``anogen fit --dry-run``, and :class:`FitResult`, what :func:`anogen.fit.fit` did for each defect type."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from anogen.data.split import Split

if TYPE_CHECKING:
    from anogen.model.dual import DualAdapter


# ------------------------------------------------------------------------------------------------ results


@dataclass
class FitResult:
    """What :func:`fit` did for one defect type.

    Attributes:
        category, defect: the names as read from the data set.
        folder: ``out/<category>/<defect>/`` (names through ``safe_name``).
        steps_done: optimiser steps the saved adapter has seen.
        final_loss: mean training loss of the last logged step (``None`` when nothing was trained here).
        status: ``trained``, ``resumed``, ``complete`` (an existing finished adapter, left alone) or
            ``other-process`` (trained by another process of a multi-process run).
        adapter: the trained adapter, in memory (``None`` unless this process trained it).
    """

    category: str
    defect: str
    folder: Path
    steps_done: int
    final_loss: float | None
    status: str
    adapter: DualAdapter | None = field(default=None, repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {
            "category": self.category,
            "defect": self.defect,
            "folder": str(self.folder),
            "steps_done": self.steps_done,
            "final_loss": self.final_loss,
            "status": self.status,
        }


@dataclass(frozen=True)
class DefectPlan:
    """One adapter of a fit: its data and where it goes."""

    defect: str
    folder: Path
    split: Split
    process: int
    resume_from: int | None
    complete: bool
    # The steps this adapter trains to: its recorded run's target on a resume, else train.steps.
    steps: int = 0
    # The recorded target when an explicit --steps changes it (announced; synth outputs of it become stale).
    recorded_steps: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "defect": self.defect,
            "folder": str(self.folder),
            "train": [s.stem for s in self.split.train],
            "held_out": [s.stem for s in self.split.held_out],
            "process": self.process,
            "resume_from": self.resume_from,
            "complete": self.complete,
            "steps": self.steps,
            "recorded_steps": self.recorded_steps,
        }


@dataclass(frozen=True)
class FitPlan:
    """Everything :func:`fit` is about to do, known without loading a model (``anogen fit --dry-run``).

    Attributes:
        trainable_parameters: parameters of one adapter (``None`` when the backbone's configs are not local).
        backbone_parameters: frozen parameters of UNet + VAE + text encoder.
        estimated_peak_bytes: the memory estimate of docs/fit.md for one process (``None`` as above).
    """

    category: str
    out: Path
    defects: list[DefectPlan]
    steps: int
    batch_size: int
    gradient_accumulation: int
    num_processes: int
    parallel: str
    resolution: int
    device: str
    mixed_precision: str
    gradient_checkpointing: bool
    bcm: bool
    prior: Path | None
    backbone: str
    trainable_parameters: int | None
    backbone_parameters: int | None
    estimated_peak_bytes: int | None
    native_resolution: int | None = None
    estimated_seconds: float | None = None
    estimate_basis: str = "unknown"
    # weights, adapter_and_optimizer, activations, overhead, total (bytes) and smallest_gpu_gib (anogen.memory)
    estimated_peak_parts: dict[str, Any] | None = None

    @property
    def effective_batch(self) -> int:
        """Pairs per optimiser step, over every process that trains the same adapter."""
        world = self.num_processes if self.parallel == "data" else 1
        return self.batch_size * self.gradient_accumulation * world

    def to_dict(self) -> dict[str, Any]:
        return {
            "category": self.category,
            "out": str(self.out),
            "defects": [d.to_dict() for d in self.defects],
            "steps": self.steps,
            "batch_size": self.batch_size,
            "gradient_accumulation": self.gradient_accumulation,
            "effective_batch": self.effective_batch,
            "num_processes": self.num_processes,
            "parallel": self.parallel,
            "resolution": self.resolution,
            "device": self.device,
            "mixed_precision": self.mixed_precision,
            "gradient_checkpointing": self.gradient_checkpointing,
            "bcm": self.bcm,
            "prior": str(self.prior) if self.prior is not None else None,
            "backbone": self.backbone,
            "trainable_parameters": self.trainable_parameters,
            "backbone_parameters": self.backbone_parameters,
            "estimated_peak_bytes": self.estimated_peak_bytes,
            "native_resolution": self.native_resolution,
            "estimated_seconds": self.estimated_seconds,
            "estimate_basis": self.estimate_basis,
            "estimated_peak_parts": self.estimated_peak_parts,
        }
