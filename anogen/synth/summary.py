"""What a synth run ended with: one :class:`DefectSummary` per job and the run's :class:`SynthSummary`."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from anogen.records.manifest import result_rows, tally
from anogen.synth.jobs import Job


@dataclass
class DefectSummary:
    """What one (category, defect) ended with."""

    category: str
    defect: str
    out_dir: str
    count: int
    accepted: int
    attempts: int
    rejected: dict[str, int]
    mean_mask_area: float | None
    generated: int
    elapsed_s: float
    exhausted: bool

    @property
    def samples_per_s(self) -> float:
        return self.generated / self.elapsed_s if self.elapsed_s > 0 else 0.0


@dataclass
class SynthSummary:
    """The result of :func:`synthesize`: one entry per defect type, plus totals."""

    defects: list[DefectSummary] = field(default_factory=list)
    elapsed_s: float = 0.0

    @property
    def exhausted(self) -> bool:
        return any(d.exhausted for d in self.defects)

    def to_dict(self) -> dict[str, Any]:
        rows = []
        for d in self.defects:
            row = dataclasses.asdict(d)
            row["samples_per_s"] = round(d.samples_per_s, 4)
            rows.append(row)
        return {
            "defects": rows,
            "accepted": sum(d.accepted for d in self.defects),
            "generated": sum(d.generated for d in self.defects),
            "elapsed_s": round(self.elapsed_s, 3),
            "exhausted": self.exhausted,
        }


def summarise_job(job: Job, rows: Mapping[int, Mapping[str, Any]], generated: int, elapsed: float) -> DefectSummary:
    """One job's summary from its manifest rows, this run's attempts generated and its seconds."""
    counts = tally(rows, job.sample.count)
    result = result_rows(rows, job.sample.count)
    areas = [float(r["mask_area"]) for r in result]
    return DefectSummary(
        category=job.category,
        defect=job.defect,
        out_dir=str(job.out_dir),
        count=job.sample.count,
        accepted=counts.accepted,
        attempts=counts.attempts,
        rejected=counts.rejected,
        mean_mask_area=round(float(np.mean(areas)), 6) if areas else None,
        generated=generated,
        elapsed_s=round(elapsed, 3),
        exhausted=counts.accepted < job.sample.count,
    )
