"""The synth run: :func:`synthesize`, the per-job loop of this rank, and holding a rank that runs ahead."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from anogen.config import ConfigRequest
from anogen.dist import Dist, current_dist
from anogen.errors import CompatibilityError
from anogen.model.recorded import BackboneCache
from anogen.progress import ProgressCallback, report
from anogen.records import read_run_record, write_run_json
from anogen.records.manifest import MANIFEST, SUBDIRS, cutoff_id, read_all_rows, read_rows, shard_name, tally
from anogen.seeding import derive_seed
from anogen.synth.backbones import check_backbones
from anogen.synth.bcm import encode_grey
from anogen.synth.jobs import Job, prepare_jobs
from anogen.synth.references import load_references
from anogen.synth.sampling import encode_backgrounds, sample_pairs
from anogen.synth.summary import SynthSummary, summarise_job
from anogen.synth.writing import finalize, run_json_for, write_attempt
from anogen.verify.synth import normal_model_for, verifier_for

# ------------------------------------------------------------------------------------------------- synth


def _report_counts(
    progress: ProgressCallback | None, job: Job, rows: Mapping[int, Mapping[str, Any]], **info: Any
) -> tuple[int, int]:
    """Report accepted / count and rejected as :func:`tally` counts them; returns (accepted, rejected)."""
    counts = tally(rows, job.sample.count)
    report(progress, f"synth {job.category}/{job.defect}", counts.accepted, job.sample.count,
           rejected=counts.rejected_total, **info)
    return counts.accepted, counts.rejected_total


def _first_missing(rows: Mapping[int, Any]) -> int:
    i = 0
    while i in rows:
        i += 1
    return i


def wait_for_slower_ranks(
    folder: Path,
    rows: dict[int, dict[str, Any]],
    todo: list[int],
    pending: Callable[[], list[int]],
    lookahead: int,
) -> list[int]:
    """Hold a rank that runs more than ``lookahead`` ids ahead of the first id nobody has finished yet.

    Without it a fast rank would generate up to ``max_attempts`` before a slow one settles the first N accepted.
    No deadlock: the rank owning the first missing id is never held (its next id is that id).
    """
    while todo and todo[0] > _first_missing(rows) + lookahead:
        time.sleep(0.1)
        rows.update(read_all_rows(folder))
        todo = pending()
    return todo


def _synth_job(
    job: Job,
    backbones: BackboneCache,
    dist: Dist,
    device: torch.device,
    progress: ProgressCallback | None,
) -> tuple[int, float, tuple[int, int] | None]:
    """Generate this rank's share of one job; returns (attempts generated, seconds, last (accepted, rejected)
    reported to ``progress``, or ``None``)."""
    from anogen.model.adapter import load_adapter

    start = time.monotonic()
    folder = job.out_dir
    log_path = folder / (MANIFEST if dist.world == 1 else shard_name(dist.rank))
    read_rows(log_path, repair=True)  # only this process appends to log_path
    rows = read_all_rows(folder)

    def pending() -> list[int]:
        cut = cutoff_id(rows, job.sample.count)
        limit = job.max_attempts if cut is None else min(job.max_attempts, cut + 1)
        return [i for i in range(dist.rank, limit, dist.world) if i not in rows]

    bcm = job.record.has_bcm
    refs = load_references(job.record, need_backgrounds=bcm, need_objects=job.mask.on_object_only)
    if bcm:
        refs = refs.scheduled(job.sample)
    folder.mkdir(parents=True, exist_ok=True)
    if dist.rank == 0:
        run = run_json_for(job, refs, dist)
        old = read_run_record(folder)
        if old is not None and "last_run" in old.raw:
            run["last_run"] = old.raw["last_run"]
        write_run_json(folder, run)
    todo = pending()
    if not todo:
        return 0, time.monotonic() - start, None
    backbone = backbones.get(job.backbone, device)
    adapter, _ = load_adapter(job.adapter_dir, backbone, device=device)
    background_latents = grey_latent = None
    if adapter.config.bcm:
        background_latents = encode_backgrounds(backbone, refs.backgrounds, device=device)
        if job.sample.bcm_uncond_reference == "grey" and job.sample.guidance > 1.0:
            grey_latent = encode_grey(backbone, device=device)
    verifier = verifier_for(job, backbone)
    for sub in SUBDIRS:
        (folder / sub).mkdir(parents=True, exist_ok=True)
    generated = 0
    shown: tuple[int, int] | None = None
    adapter.install(backbone.unet)
    try:
        while todo:
            if dist.world > 1:
                todo = wait_for_slower_ranks(folder, rows, todo, pending, dist.world * job.sample.batch_size * 2)
                if not todo:
                    break
            batch = todo[: job.sample.batch_size]
            seeds = [derive_seed(job.sample.seed, job.category, job.defect, i) for i in batch]
            images, parts = sample_pairs(
                backbone, adapter, job.record, seeds, job.sample,
                ids=batch, background_latents=background_latents, grey_latent=grey_latent, device=device,
            )
            for k, sample_id in enumerate(batch):
                rows[sample_id] = write_attempt(job, sample_id, seeds[k], images[k], parts[k], refs, log_path,
                                                verifier)
            generated += len(batch)
            if dist.world > 1:
                rows.update({i: r for i, r in read_all_rows(folder).items() if i not in rows})
            elapsed = time.monotonic() - start
            # Counted as the merged manifest will hold them: attempts of this batch past the count-th accepted
            # one are deleted by finalize, so they are not counted as rejected here either.
            shown = _report_counts(progress, job, rows, samples_s=f"{generated / elapsed:.2f}" if elapsed > 0 else "-")
            todo = pending()
    finally:
        adapter.uninstall(backbone.unet)
    return generated, time.monotonic() - start, shown


def synthesize(
    runs: Path,
    out: Path,
    request: ConfigRequest | None = None,
    *,
    progress: ProgressCallback | None = None,
    device: str | torch.device | None = None,
    dist: Dist | None = None,
) -> SynthSummary:
    """Generate ``count`` accepted (image, part, mask) triples per defect type below ``runs``.

    Args:
        runs (`Path`): a fit output root, a category folder or one defect's folder (every ``adapter.json`` below).
        out (`Path`): output root; writes ``out/<category>/<defect>/``.
        request (`ConfigRequest`, *optional*): preset, config file, recipe and overrides (``{"sample": {...},
            "mask": {...}, "verify": {...}}``, flags or whole config objects), resolved once per adapter over the
            configs it recorded at fit (:func:`~anogen.synth.jobs.job_configs`). ``None`` takes the recorded ones;
            mask and verification settings nobody asked for are, when resuming, the output folder's own (e.g.
            after ``anogen mask``).
        progress (`ProgressCallback`, *optional*): receives accepted / count with rejected and samples/s.
        device (*optional*): defaults to the launcher's device, else CUDA when available, else CPU.
        dist (`Dist`, *optional*): defaults to :func:`current_dist` (environment of the launcher).

    Returns:
        SynthSummary: per defect type: accepted, rejected by reason, mean mask area, time, throughput;
        ``exhausted`` when ``max_attempts`` ran out before ``count`` accepted (results are kept).

    Raises:
        CompatibilityError: an existing output made with another adapter or other generation settings, or an
            adapter made for another backbone; raised before anything is generated.
    """
    start = time.monotonic()
    jobs = prepare_jobs(Path(runs), Path(out), request)
    dist = dist or current_dist()
    if device is None:
        device = dist.device or ("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    check_backbones(jobs)
    summary = SynthSummary()
    backbones = BackboneCache()
    # Every adapter against its loaded backbone first, so that a wrong one stops the run before anything is made.
    for job in jobs:
        backbone = backbones.get(job.backbone, device)
        if backbone.content_hash != job.backbone_hash:
            raise CompatibilityError(
                f"{job.adapter_dir / 'adapter.json'}: adapter made for backbone {job.backbone.id!r} "
                f"({job.backbone_hash[:12]}), but that backbone now loads as "
                f"{backbone.content_hash[:12]}",
                hint="refit the adapter on this backbone, or restore the backbone it was made with",
            )
        if job.verify.mode != "off" and dist.rank == 0:
            normal_model_for(job.record, job.out_dir.parent, backbone, job.verify)  # built once, before the ranks
    dist.barrier()
    for job in jobs:
        generated, elapsed, shown = _synth_job(job, backbones, dist, device, progress)
        dist.barrier()
        if dist.rank == 0:
            rows = finalize(job.out_dir, max(job.keep_count, job.sample.count))
            counts = tally(rows, job.sample.count)
            if shown != (counts.accepted, counts.rejected_total):
                # The merged manifest is the truth: other processes' rows, or nothing generated by this run.
                _report_counts(progress, job, rows)
            run = read_run_record(job.out_dir)
            if run is not None and generated:
                speed = {"samples_per_s": round(generated / elapsed, 4) if elapsed > 0 else None}
                write_run_json(job.out_dir, {**run.raw, "last_run": speed})
        dist.barrier()
        rows = read_all_rows(job.out_dir)
        summary.defects.append(summarise_job(job, rows, generated, elapsed))
    summary.elapsed_s = time.monotonic() - start
    return summary
