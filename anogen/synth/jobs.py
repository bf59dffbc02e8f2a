"""Jobs: one (category, defect) to synthesise, its effective configs, and the checks that resuming into its
output folder is safe; all before any model is loaded. No torch."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from anogen.config import MaskConfig, SampleConfig, resolve
from anogen.errors import CompatibilityError, InputError
from anogen.io import safe_name
from anogen.records import AdapterLink, AdapterRecord, find_adapter_dirs, read_adapter_record, read_run_record
from anogen.verify.config import VerifyConfig
from anogen.verify.synth import resume_verify, verify_config_for

# Sample settings that change the pixels of an attempt: a rerun into an existing output must keep them.
GENERATION_FIELDS = (
    "sampler", "steps", "guidance", "negative_prompt", "mixed_precision", "seed",
    "bcm_uncond_reference", "bcm_reference_every", "bcm_reference_pool",
)  # fmt: skip
REMASK_MARKER = ".remask-pending.json"


# ----------------------------------------------------------------------------------------------- planning


@dataclass
class Job:
    """One (category, defect) to synthesise: its adapter, output folder and effective configs."""

    adapter_dir: Path
    record: AdapterRecord
    out_dir: Path
    category: str
    defect: str
    sample: SampleConfig
    mask: MaskConfig
    adapter_sha256: str
    # The folder keeps the result of the largest count it was ever run with: a rerun with a smaller --count
    # never deletes samples of an earlier, larger result (readers take the first ``count`` accepted rows).
    keep_count: int = 0
    verify: VerifyConfig = field(default_factory=VerifyConfig)

    @property
    def max_attempts(self) -> int:
        return self.sample.max_attempts if self.sample.max_attempts is not None else 4 * self.sample.count


def configs_for(
    record: AdapterRecord,
    sample: SampleConfig | None,
    mask: MaskConfig | None,
    overrides: Mapping[str, Mapping[str, Any]] | None,
    recipe: str | None = None,
) -> tuple[SampleConfig, MaskConfig]:
    """Effective configs: the given ones, else the adapter's recorded ones (its fit preset, or that preset under
    ``recipe``); overrides win."""
    recorded = record.config
    base: dict[str, Any] = {}
    if sample is not None:
        base["sample"] = dataclasses.asdict(sample)
    elif recipe is not None:
        preset = record.preset or recorded.get("preset")
        if not preset:
            raise InputError(
                f"--recipe {recipe}: adapter {record.category}/{record.defect} records no fit preset",
                hint="pass --preset with the preset it was fitted with",
            )
        base["sample"] = dataclasses.asdict(resolve(str(preset), recipe=recipe).sample)
    else:
        base["sample"] = dict(recorded.get("sample") or {})
    base["mask"] = dataclasses.asdict(mask) if mask is not None else dict(recorded.get("mask") or {})
    for section in ("sample", "mask"):
        base[section] = {k: v for k, v in base[section].items() if k in config_field_names(section)}
        base[section].update({k: v for k, v in (overrides or {}).get(section, {}).items() if v is not None})
    resolved = resolve(overrides=base)
    return resolved.sample, resolved.mask


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


def _check_sample_numbers(sample: SampleConfig) -> None:
    if sample.count < 1:
        # A count of 0 would exit 0 having done nothing, which a CI job would take for success.
        raise InputError(
            f"--count {sample.count} asks for no samples: nothing to do",
            hint="pass --count 1 or more (accepted samples per defect type)",
        )
    for name, flag in (("steps", "--steps"), ("batch_size", "--batch-size")):
        if getattr(sample, name) < 1:
            raise InputError(f"{flag} must be at least 1 (got {getattr(sample, name)})")
    if sample.max_attempts is not None and sample.max_attempts < 1:
        raise InputError(f"--max-attempts must be at least 1 (got {sample.max_attempts})")
    if sample.bcm_reference_every < 1:
        raise InputError(f"bcm_reference_every must be >= 1 (got {sample.bcm_reference_every})")


def prepare_jobs(
    runs: Path,
    out: Path,
    sample: SampleConfig | None = None,
    mask: MaskConfig | None = None,
    *,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
    recipe: str | None = None,
    verify: VerifyConfig | None = None,
) -> list[Job]:
    """Find the adapters below ``runs``, build each one's configs and check resuming is safe (no model load)."""
    from anogen.model.adapter import adapter_sha256

    jobs = []
    mask_explicit = mask is not None or any(v is not None for v in (overrides or {}).get("mask", {}).values())
    verify_explicit = verify is not None or any(v is not None for v in (overrides or {}).get("verify", {}).values())
    seen: dict[Path, Path] = {}
    for folder in find_adapter_dirs(runs):
        record = read_adapter_record(folder)
        category = str(record.category or folder.parent.name)
        defect = str(record.defect or folder.name)
        sample_cfg, mask_cfg = configs_for(record, sample, mask, overrides, recipe)
        _check_sample_numbers(sample_cfg)
        out_dir = Path(out) / safe_name(category) / safe_name(defect)
        if out_dir in seen:
            raise InputError(f"adapters {seen[out_dir]} and {folder} both write to {out_dir}")
        seen[out_dir] = folder
        job = Job(folder, record, out_dir, category, defect, sample_cfg, mask_cfg, adapter_sha256(folder))
        job.verify = verify_config_for(record, verify, overrides)
        _check_resume(job, mask_explicit)
        resume_verify(job, read_run_record(job.out_dir), verify_explicit)
        jobs.append(job)
    return jobs
