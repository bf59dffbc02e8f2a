"""The dry-run plan of ``anogen synth``: per job, what exists, what is left, and rough time and disk estimates."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from anogen.records import read_run_record
from anogen.records.manifest import read_all_rows, result_rows
from anogen.synth.jobs import Job


def _bytes_per_attempt(resolution: int) -> int:
    # Rough PNG sizes: RGB image ~1.5 B/px (natural texture), part image ~0.5 B/px (mostly flat grey), mask ~0.02.
    return int(resolution * resolution * 2.1) + 200


def _resolution_of(job: Job) -> int:
    """The output resolution without loading the model: the backbone's native size (``describe_backbone``), else
    the recorded training resolution."""
    from anogen.errors import BackboneError
    from anogen.model.spec import describe_backbone

    try:
        native = describe_backbone(job.backbone).native_resolution if job.backbone.id else None
    except BackboneError:
        native = None
    if native is not None:
        return native
    train = (job.record.config.get("train") or {}).get("resolution")
    return int(train or 512)


def plan(jobs: Sequence[Job]) -> list[dict[str, Any]]:
    """The dry-run plan: per defect type, what exists, what is left, and rough time and disk estimates.

    Time: from the samples/s a previous run in the same folder recorded, else a rough guess of
    ``steps x 4 UNet rows x (resolution / 512)^2 x 0.02 s`` (GPU) or ``x 1.5 s`` (CPU) per attempt.
    """
    import torch

    gpu = torch.cuda.is_available()
    entries = []
    for job in jobs:
        rows = read_all_rows(job.out_dir) if job.out_dir.is_dir() else {}
        accepted = len(result_rows(rows, job.sample.count))
        done_attempts = len(rows)
        rate = (sum(1 for r in rows.values() if r.get("accepted")) / done_attempts) if done_attempts else 1.0
        missing = max(job.sample.count - accepted, 0)
        to_generate = min(math.ceil(missing / max(rate, 0.05)), max(job.max_attempts - done_attempts, 0))
        resolution = _resolution_of(job)
        run = read_run_record(job.out_dir)
        measured = run.last_run.get("samples_per_s") if run is not None else None
        if measured:
            seconds = to_generate / float(measured)
            basis = "measured"
        else:
            per_row = (0.02 if gpu else 1.5) * (resolution / 512) ** 2
            seconds = to_generate * job.sample.steps * 4 * per_row
            basis = "rough guess"
        entries.append(
            {
                "category": job.category,
                "defect": job.defect,
                "adapter": str(job.adapter_dir),
                "out": str(job.out_dir),
                "resolution": resolution,
                "count": job.sample.count,
                "accepted": accepted,
                "attempts_done": done_attempts,
                "max_attempts": job.max_attempts,
                "to_generate": to_generate,
                "estimated_s": round(seconds, 1),
                "estimate_basis": basis,
                "estimated_disk_mb": round(to_generate * _bytes_per_attempt(resolution) / 1e6, 2),
                "sampler": job.sample.sampler,
                "steps": job.sample.steps,
                "guidance": job.sample.guidance,
                "bcm": bool(job.record.adapter_config.get("bcm")),
            }
        )
    return entries
