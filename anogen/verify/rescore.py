"""``anogen verify SYNTH``: score an existing synth output and re-judge its accepted set, without regenerating.

For each synth folder: every attempt whose mask the mask step accepted is scored (rows that already hold scores
keep them: ``anogen mask`` rescores the masks it changes), its verdict is derived with the given thresholds, and
``manifest.jsonl`` and ``run.json`` (``verify``) are rewritten atomically, only when something changed. Scores are
a deterministic function of the files, so a second run is a no-op and an interrupted one (nothing is written
before a folder's atomic rewrite; finished folders are skipped as no-ops) gives the same result when rerun. If
fewer than ``count`` samples stay accepted, rerunning the same ``anogen synth`` command tops the folder up with the
folder's thresholds. See docs/verify.md.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from anogen.errors import InputError
from anogen.records import RunRecord
from anogen.verify.config import VerifyConfig


@dataclass
class VerifySummary:
    """One entry per synth folder: attempts, accepted before / after, rows scored now, rejections by reason."""

    folders: list[dict[str, Any]] = field(default_factory=list)


def verify_output(
    synth_dir: str | Path,
    *,
    overrides: Mapping[str, Any] | None = None,
    progress: Any = None,
) -> VerifySummary:
    """Score the samples of a synth output and rewrite its accepted set with the given thresholds.

    Args:
        synth_dir: a synth output root, category folder or defect folder.
        overrides (`Mapping`, *optional*): ``verify`` fields over each folder's recorded ones (``None`` ignored),
            e.g. ``{"alignment_min": 0.8}``. ``mode`` may be ``reject`` (the default when the folder was made
            with verification ``off`` or before it existed) or ``score``; ``off`` is refused.
        progress (`ProgressCallback`, *optional*): one event per row.

    Raises:
        InputError: no synth output there, an unfinished synth or ``anogen mask`` run in a folder, ``mode off``.
    """
    from anogen.io import load_mask
    from anogen.masks import REASONS as MASK_REASONS
    from anogen.progress import report
    from anogen.records import read_run_record, write_run_json
    from anogen.records.manifest import (
        MANIFEST,
        REMASK_MARKER,
        find_synth_dirs,
        read_rows,
        result_rows,
        shard_paths,
        write_manifest,
    )
    from anogen.verify.synth import OutputRescorer

    summary = VerifySummary()
    for folder in find_synth_dirs(Path(synth_dir)):
        if shard_paths(folder) or (folder / REMASK_MARKER).exists():
            raise InputError(f"{folder}: an unfinished synth or `anogen mask` run is in this folder",
                             hint="rerun that command to finish it first")
        run = read_run_record(folder) or RunRecord.from_dict({}, folder)
        config = _config(run, overrides)
        # verify never rewrites masks: it scores the ones on disk (refinement acts where a mask is written).
        scoring = dataclasses.replace(config, refine=False).to_dict()
        rescorer = OutputRescorer(folder, RunRecord.from_dict({**run.raw, "verify": scoring}, folder))
        rows = read_rows(folder / MANIFEST)
        # Scores computed another way (e.g. another alignment_floor) are stale: every sample is scored again.
        stale = _scored_differently(run, config)
        new_rows = []
        for k, row in enumerate(rows):
            if row.get("reason") in MASK_REASONS:
                new_rows.append(row)  # the mask step rejected it: nothing to verify
            else:
                mask = load_mask(folder / str(row["mask"]))
                _, accepted, reason, scores = rescorer.verdict(row, mask, stale, True, None)
                new_row = {key: v for key, v in row.items() if key != "verify"}
                new_rows.append({**new_row, "accepted": accepted, "reason": reason,
                                 **({"verify": scores} if scores is not None else {})})
            report(progress, f"verify {folder.parent.name}/{folder.name}", k + 1, len(rows))
        changed = new_rows != rows or run.raw.get("verify") != config.to_dict()
        if changed:
            write_manifest(folder, new_rows)  # atomic; run.json after it, so a kill in between reruns cleanly
            # Rewritten with this anogen's schema_version: it now holds this version's verify section.
            kept = {k: v for k, v in run.raw.items() if k != "schema_version"}
            write_run_json(folder, {**kept, "verify": config.to_dict()})
        count = run.raw.get("count")
        rejected: dict[str, int] = {}
        for r in new_rows:
            if not r.get("accepted"):
                rejected[str(r.get("reason"))] = rejected.get(str(r.get("reason")), 0) + 1
        after = len(result_rows(new_rows, count))
        summary.folders.append({
            "folder": str(folder), "count": count, "attempts": len(rows),
            "accepted_before": len(result_rows(rows, count)), "accepted_after": after,
            "scored": rescorer.rescored, "rejected": dict(sorted(rejected.items())), "changed": changed,
            "needs_top_up": count is not None and after < int(count),
        })
    return summary


def _scored_differently(run: RunRecord, config: VerifyConfig) -> bool:
    """Whether the folder's recorded scores were computed with other scoring settings than ``config``'s."""
    from anogen.verify.config import JUDGING_FIELDS

    if not run.verify or run.verify.get("mode", "off") == "off":
        return False  # nothing was scored: rows without scores are scored anyway
    names = {f.name for f in dataclasses.fields(VerifyConfig)}
    recorded = VerifyConfig(**{k: v for k, v in run.verify.items() if k in names}).to_dict()
    now = config.to_dict()
    return any(recorded[k] != now[k] for k in names if k not in JUDGING_FIELDS)


def _config(run: RunRecord, overrides: Mapping[str, Any] | None) -> VerifyConfig:
    from anogen.config import resolve

    names = {f.name for f in dataclasses.fields(VerifyConfig)}
    base = {k: v for k, v in (run.verify or {}).items() if k in names}
    if base.get("mode", "off") == "off":
        base["mode"] = "reject"  # verifying a folder made without verification: judging is the point
    base.update({k: v for k, v in (overrides or {}).items() if v is not None})
    if base["mode"] == "off":
        raise InputError("anogen verify --mode off would verify nothing", hint="use --mode reject or --mode score")
    return resolve(overrides={"verify": base}).verify


__all__ = ["VerifySummary", "verify_output"]
