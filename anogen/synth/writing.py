"""Writing a job's output: each attempt's three PNGs and manifest row, its ``run.json``, and finalizing the
folder (merging shards, cutting after the count-th accepted, deleting leftovers). No torch."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np

from anogen.dist import Dist
from anogen.io import save_png_atomic
from anogen.masks import make_mask
from anogen.records.manifest import (
    SUBDIRS,
    append_row,
    cutoff_id,
    make_row,
    read_all_rows,
    sample_name,
    shard_paths,
    write_manifest,
)
from anogen.synth.jobs import Job
from anogen.synth.references import References
from anogen.verify.synth import SampleVerifier


def run_json_for(job: Job, refs: References, dist: Dist) -> dict[str, Any]:
    """The ``run.json`` of a job's output folder: what made it (adapter, backbone, prior, configs, references)."""
    from anogen import __version__

    return {
        "anogen_version": __version__,
        "adapter": {
            "path": str(job.adapter_dir),
            "sha256": job.adapter_sha256,
            "steps_done": job.record.raw.get("steps_done"),
        },
        "category": job.category,
        "defect": job.defect,
        # Copied from adapter.json as it holds them (raw), so run.json says exactly what made the samples.
        "backbone": job.record.raw.get("backbone"),
        "data": job.record.raw.get("data"),
        "prior": job.record.raw.get("prior"),
        "prompts": job.record.raw.get("prompts"),
        "sample": dataclasses.asdict(job.sample),
        "mask": dataclasses.asdict(job.mask),
        "verify": job.verify.to_dict(),
        "seed": job.sample.seed,
        "count": job.sample.count,
        "kept_count": job.keep_count,
        "max_attempts": job.max_attempts,
        "references": refs.stems,
        "world_size": dist.world,
    }


def _cleanup(folder: Path, keep_ids: set[int]) -> None:
    """Delete temp files of killed writes and PNGs of attempts outside the manifest (never part of the result)."""
    for sub in SUBDIRS:
        d = folder / sub
        if not d.is_dir():
            continue
        for path in d.iterdir():
            if path.name.startswith(".") and path.name.endswith(".tmp"):
                path.unlink(missing_ok=True)
            elif path.suffix == ".png" and path.stem.isdigit() and int(path.stem) not in keep_ids:
                path.unlink(missing_ok=True)


def finalize(folder: Path, count: int) -> dict[int, dict[str, Any]]:
    """Merge every row into ``manifest.jsonl`` (sorted by id, cut after the ``count``-th accepted attempt), delete
    shards, temp files and files of attempts past the cut. Deterministic: the same rows give the same bytes."""
    rows = read_all_rows(folder)
    cut = cutoff_id(rows, count)
    kept = {i: r for i, r in rows.items() if cut is None or i <= cut}
    write_manifest(folder, kept.values())
    for shard in shard_paths(folder):
        shard.unlink(missing_ok=True)
    _cleanup(folder, set(kept))
    return kept


def write_attempt(
    job: Job, sample_id: int, seed: int, image: np.ndarray, part: np.ndarray, refs: References, log_path: Path,
    verifier: SampleVerifier | None = None,
) -> dict[str, Any]:
    """Mask one sampled attempt, verify it if asked, write its three PNGs, then append its manifest row to
    ``log_path``; returns the row."""
    result = make_mask(part, job.mask, size=image.shape[:2], object_mask=refs.object_mask(sample_id))
    accepted, reason, mask, area = result.accepted, result.reason, result.mask, result.area
    extra: dict[str, Any] = {}
    if refs.stems:
        extra["reference"] = refs.stems[refs.index(sample_id)]
    if verifier is not None and result.accepted and result.mask.any():  # docs/verify.md: only what masks accept
        mask, extra["verify"], reason = verifier.check(image, result.mask)
        accepted = reason is None
        if mask is not result.mask:  # refined (verify.refine)
            area = float((mask > 0).mean())
    name = sample_name(sample_id)
    save_png_atomic(job.out_dir / "image" / f"{name}.png", image)
    save_png_atomic(job.out_dir / "part" / f"{name}.png", part)
    save_png_atomic(job.out_dir / "mask" / f"{name}.png", mask)
    row = make_row(
        sample_id,
        seed=seed,
        category=job.category,
        defect=job.defect,
        accepted=accepted,
        reason=reason,
        mask_area=area,
        adapter_sha256=job.adapter_sha256,
        **extra,
    )
    append_row(log_path, row)  # only now: the three files exist
    return row
