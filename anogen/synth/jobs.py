"""Jobs: one (category, defect) to synthesise, its effective configs, and the checks that resuming into its
output folder is safe; all before any model is loaded. No torch."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from anogen.config import BackboneConfig, ConfigRequest, MaskConfig, ResolvedConfig, SampleConfig, resolve
from anogen.errors import CompatibilityError, InputError
from anogen.io import safe_name
from anogen.model.recorded import recorded_backbone
from anogen.records import AdapterLink, AdapterRecord, find_adapter_dirs, read_adapter_record, read_run_record
from anogen.records.manifest import REMASK_MARKER
from anogen.verify.config import VerifyConfig
from anogen.verify.synth import resume_verify

# Sample settings that change the pixels of an attempt: a rerun into an existing output must keep them.
GENERATION_FIELDS = (
    "sampler", "steps", "guidance", "negative_prompt", "mixed_precision", "seed",
    "bcm_uncond_reference", "bcm_reference_every", "bcm_reference_pool",
)  # fmt: skip
# The sections of an adapter's recorded config that synth resolves over (fit's own sections do not sample).
SYNTH_SECTIONS = ("sample", "mask", "verify")


# ----------------------------------------------------------------------------------------------- planning


@dataclass
class Job:
    """One (category, defect) to synthesise: its adapter, output folder, effective configs and backbone (the one
    the adapter was fitted on, with the content hash it recorded)."""

    adapter_dir: Path
    record: AdapterRecord
    out_dir: Path
    category: str
    defect: str
    sample: SampleConfig
    mask: MaskConfig
    adapter_sha256: str
    backbone: BackboneConfig
    backbone_hash: str
    # The folder keeps the result of the largest count it was ever run with: a rerun with a smaller --count
    # never deletes samples of an earlier, larger result (readers take the first ``count`` accepted rows).
    keep_count: int = 0
    verify: VerifyConfig = field(default_factory=VerifyConfig)

    @property
    def max_attempts(self) -> int:
        return self.sample.max_attempts if self.sample.max_attempts is not None else 4 * self.sample.count


def recorded_sections(record: AdapterRecord) -> dict[str, Any]:
    """The config an adapter recorded at fit, as :func:`anogen.config.resolve`'s ``recorded`` layer: the sections
    synth takes from it and the preset it was fitted with (the one place synth reads ``adapter.json``'s config)."""
    recorded = record.config
    sections: dict[str, Any] = {name: dict(recorded.get(name) or {}) for name in SYNTH_SECTIONS}
    sections["preset"] = record.preset or recorded.get("preset")
    return sections


def job_configs(record: AdapterRecord, request: ConfigRequest) -> ResolvedConfig:
    """One adapter's effective configs: ``request`` resolved over the config the adapter recorded at fit
    (defaults < recorded < preset < recipe < config file < flags; a recipe without a preset applies to the
    adapter's fit preset)."""
    recorded = recorded_sections(record)
    if request.recipe is not None and not request.preset and not recorded["preset"]:
        raise InputError(
            f"--recipe {request.recipe}: adapter {record.category}/{record.defect} records no fit preset",
            hint="pass --preset with the preset it was fitted with",
        )
    return request.resolve(recorded=recorded)


def config_field_names(section: str) -> set[str]:
    """The field names of the ``sample`` or ``mask`` config dataclass (what a recorded section may keep)."""
    cls = SampleConfig if section == "sample" else MaskConfig
    return {f.name for f in dataclasses.fields(cls)}


def _check_resume(job: Job, mask_explicit: bool) -> None:
    """Refuse to add to an output made with other generation settings; adopt its mask config if none was asked."""
    if (job.out_dir / REMASK_MARKER).exists():
        raise InputError(
            f"{job.out_dir}: an `anogen mask` run was interrupted here",
            hint=f"rerun `anogen mask {job.out_dir}` to finish it, then synth",
        )
    run = read_run_record(job.out_dir)
    job.keep_count = job.sample.count
    if run is None:
        return
    if run.count is not None:
        job.keep_count = max(job.sample.count, run.count, int(run.kept_count or 0))
    old_sha = run.adapter.sha256
    if old_sha and old_sha != job.adapter_sha256:
        raise _stale_output_error(job, run.adapter)
    old_sample = run.sample
    changed = [f for f in GENERATION_FIELDS if f in old_sample and old_sample[f] != getattr(job.sample, f)]
    if changed:
        detail = ", ".join(f"{f} {old_sample[f]!r} -> {getattr(job.sample, f)!r}" for f in changed)
        raise CompatibilityError(
            f"{job.out_dir}: existing samples were made with other settings ({detail})",
            hint="use the same settings to resume or top up, or write to a new --out folder",
        )
    old_mask = run.mask
    if old_mask is not None and old_mask != dataclasses.asdict(job.mask):
        if mask_explicit:
            raise CompatibilityError(
                f"{job.out_dir}: existing masks were made with other mask settings",
                hint=f"re-threshold them first with `anogen mask {job.out_dir} ...`, then synth tops up",
            )
        # No mask setting asked for: keep the folder's own (e.g. after `anogen mask` re-thresholded it).
        job.mask = resolve(overrides={"mask": old_mask}).mask


def _stale_output_error(job: Job, made_with: AdapterLink) -> CompatibilityError:
    """An output made with an adapter that is not this one: usually the same folder, retrained since (``fit
    --resume --steps``); say so, and how to go on, rather than a bare hash mismatch."""
    old_sha = str(made_with.sha256)
    way = f"write this adapter's samples to a new --out, or regenerate: delete {job.out_dir} and rerun"
    old_path = made_with.path
    same_folder = old_path is not None and Path(old_path).resolve() == job.adapter_dir.resolve()
    if not same_folder:
        return CompatibilityError(
            f"{job.out_dir}: made with another adapter ({old_path or old_sha[:12]}), not {job.adapter_dir}",
            hint=way,
        )
    old_steps, new_steps = made_with.steps_done, job.record.steps_done
    steps = f" ({old_steps} steps; it now has {new_steps})" if old_steps is not None and new_steps is not None else ""
    return CompatibilityError(
        f"{job.out_dir} is stale: made from an earlier version of {job.adapter_dir}{steps}, retrained since",
        hint=way,
    )


def prepare_jobs(runs: Path, out: Path, request: ConfigRequest | None = None) -> list[Job]:
    """Find the adapters below ``runs``, resolve each one's configs (:func:`job_configs`) and check resuming is
    safe (no model load).

    Args:
        runs (`Path`): a fit output root, a category folder or one defect's folder.
        out (`Path`): the output root.
        request (`ConfigRequest`, *optional*): preset, config file, flags and recipe; ``None`` takes each
            adapter's recorded configs as they are.
    """
    from anogen.model.adapter import adapter_sha256

    request = request or ConfigRequest()
    request.check()
    jobs = []
    # No mask or verification setting asked for: a folder keeps its own (e.g. after `anogen mask` / `verify`).
    mask_chosen, verify_chosen = request.chooses("mask"), request.chooses("verify")
    seen: dict[Path, Path] = {}
    for folder in find_adapter_dirs(runs):
        record = read_adapter_record(folder)
        category = str(record.category or folder.parent.name)
        defect = str(record.defect or folder.name)
        resolved = job_configs(record, request)
        out_dir = Path(out) / safe_name(category) / safe_name(defect)
        if out_dir in seen:
            raise InputError(f"adapters {seen[out_dir]} and {folder} both write to {out_dir}")
        seen[out_dir] = folder
        backbone, backbone_hash = recorded_backbone(record)
        job = Job(folder, record, out_dir, category, defect, resolved.sample, resolved.mask, adapter_sha256(folder),
                  backbone, backbone_hash, verify=resolved.verify)
        _check_resume(job, mask_chosen)
        resume_verify(job, read_run_record(job.out_dir), verify_chosen)
        jobs.append(job)
    return jobs
