"""``anogen mask``: re-threshold the part images of synth folders into new masks, without regenerating anything."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from anogen.config import MaskConfig, resolve
from anogen.errors import InputError
from anogen.io import load_mask, load_rgb, save_png_atomic, write_json_atomic
from anogen.masks import make_mask
from anogen.progress import ProgressCallback, report
from anogen.records import RunRecord, read_run_record, write_run_json
from anogen.records.manifest import (
    MANIFEST,
    REMASK_MARKER,
    find_synth_dirs,
    read_rows,
    result_rows,
    shard_paths,
    write_manifest,
)
from anogen.synth.jobs import config_field_names
from anogen.synth.references import References, load_references
from anogen.verify.synth import OutputRescorer

# ------------------------------------------------------------------------------------------------ remask


@dataclass
class RemaskSummary:
    """Per synth folder: accepted before and after re-thresholding, and the count it was made for."""

    folders: list[dict[str, Any]] = field(default_factory=list)


def remask(
    synth_dir: Path,
    mask: MaskConfig | None = None,
    *,
    overrides: Mapping[str, Any] | None = None,
    progress: ProgressCallback | None = None,
) -> RemaskSummary:
    """Re-threshold every part image below ``synth_dir`` into a new mask, without regenerating anything.

    Masks are rewritten one by one (each atomically), then ``manifest.jsonl`` and ``run.json`` (atomically). A
    marker file guards the window in between: synth refuses a folder whose re-thresholding was interrupted, and
    rerunning ``anogen mask`` finishes it. If fewer than ``count`` rows are accepted afterwards, rerunning the
    same ``anogen synth`` command tops the folder up.

    Args:
        synth_dir (`Path`): a synth output root, category folder or defect folder.
        mask (`MaskConfig`, *optional*): the new settings; ``None`` starts from each folder's recorded ones.
        overrides (`Mapping`, *optional*): mask fields to change (``None`` values ignored), e.g. ``{"threshold":
            "otsu"}``.
    """
    summary = RemaskSummary()
    for folder in find_synth_dirs(synth_dir):
        if shard_paths(folder):
            raise InputError(
                f"{folder}: holds manifest shards of an unfinished synth run",
                hint="rerun the synth command to finish it first",
            )
        run = read_run_record(folder) or RunRecord.from_dict({}, folder)
        base = dataclasses.asdict(mask) if mask is not None else dict(run.mask or {})
        base.update({k: v for k, v in (overrides or {}).items() if v is not None})
        cfg = resolve(overrides={"mask": base}).mask
        rows = read_rows(folder / MANIFEST)
        refs = References([], [], [], None)
        if cfg.on_object_only:
            refs = load_references(run, need_backgrounds=False, need_objects=True)
            if any("reference" in row for row in rows):
                # a BCM run: each attempt's object mask is that of the background it was sampled with
                known = config_field_names("sample")
                recorded = {k: v for k, v in run.sample.items() if k in known}
                refs = refs.scheduled(resolve(overrides={"sample": recorded}).sample)
        marker = folder / REMASK_MARKER
        write_json_atomic(marker, {"mask": dataclasses.asdict(cfg)})
        count = run.raw.get("count")
        before = len(result_rows(rows, count))
        rescorer = OutputRescorer(folder, run)
        new_rows = []
        missing = [row["part"] for row in rows if not (folder / row["part"]).is_file()]
        if missing:
            raise InputError(f"{folder}: {len(missing)} part image(s) of the manifest are missing, e.g. {missing[0]}",
                             hint="rerun the synth command to regenerate them")
        for k, row in enumerate(rows):
            part = np.asarray(load_rgb(folder / row["part"]))
            with Image.open(folder / row["image"]) as img:
                size = (img.height, img.width)
            obj = refs.object_mask(int(row["id"])) if refs.object_masks else None
            result = make_mask(part, cfg, size=size, object_mask=obj)
            changed = not (folder / row["mask"]).is_file() or not np.array_equal(
                load_mask(folder / row["mask"]) > 0, result.mask > 0)
            written, accepted, reason, scores = rescorer.verdict(row, result.mask, changed, result.accepted,
                                                                 result.reason)
            save_png_atomic(folder / row["mask"], written)
            area = result.area if written is result.mask else float((written > 0).mean())  # refined
            new_row = {k: v for k, v in row.items() if k != "verify"}  # scores of the old mask must not stay
            new_rows.append({**new_row, "accepted": accepted, "reason": reason, "mask_area": round(area, 6),
                             **({"verify": scores} if scores is not None else {})})
            report(progress, f"mask {folder.parent.name}/{folder.name}", k + 1, len(rows))
        write_manifest(folder, new_rows)
        # Rewritten with this anogen's schema_version: it now holds this version's mask section.
        kept = {k: v for k, v in run.raw.items() if k != "schema_version"}
        write_run_json(folder, {**kept, "mask": dataclasses.asdict(cfg)})
        marker.unlink()
        after = len(result_rows(new_rows, count))
        summary.folders.append(
            {"folder": str(folder), "count": count, "accepted_before": before, "accepted_after": after,
             "attempts": len(rows), "needs_top_up": count is not None and after < int(count)}
        )
    return summary
