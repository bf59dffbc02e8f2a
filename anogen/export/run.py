"""The export itself: the table of format planners and :func:`export`, which plans and then writes.

An export is planned first (every output file, its source and how it is derived), then written by
:mod:`anogen.export.writer`: atomic files, a journal so an interrupted export resumes, and the export manifest
(``export.json`` + ``export_manifest.jsonl``) when everything is written; a later run with the same inputs finds
nothing changed and does nothing.

No torch here: exports run on machines that only have the data.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path

from anogen.export import uptodate
from anogen.export.coco import plan_coco
from anogen.export.config import ExportConfig
from anogen.export.folder import plan_folder
from anogen.export.items import CategoryItems, collect_items
from anogen.export.mvtec import plan_mvtec
from anogen.export.notice import NOTICE_FILE
from anogen.export.planning import ExportPlan
from anogen.export.visa import plan_visa
from anogen.export.writer import EXPORT_JSON, EXPORT_MANIFEST, ExportResult, check_destination, run_plan
from anogen.progress import ProgressCallback
from anogen.records import find_synth_folders, read_synth_folder

Planner = Callable[[Sequence[CategoryItems], ExportConfig], ExportPlan]

# Format name -> the planner of its layout; ExportConfig.validate() admits exactly these names (config.FORMATS).
PLANNERS: dict[str, Planner] = {"mvtec": plan_mvtec, "coco": plan_coco, "folder": plan_folder, "visa": plan_visa}


def export(
    synth: Sequence[str | Path],
    config: ExportConfig,
    *,
    progress: ProgressCallback | None = None,
    dry_run: bool = False,
) -> ExportResult | ExportPlan:
    """Export synth folders (plus the real category) as a data set tree.

    Args:
        synth (`Sequence[str | Path]`): synth output folders (root, category or defect folders).
        config (`ExportConfig`): the export's settings.
        progress (`ProgressCallback`, *optional*): progress events.
        dry_run (`bool`, defaults to False): plan only; return the :class:`ExportPlan` and write nothing.

    Returns:
        :class:`ExportResult`, or the :class:`ExportPlan` when ``dry_run``.
    """
    config.validate()
    started_ns = time.time_ns()
    out = Path(config.out).resolve()
    key = uptodate.run_key(synth, config)
    if not dry_run and not config.force:
        # Nothing the last complete export depended on changed: no manifest is parsed, no source read.
        last = uptodate.check(out, key)
        if last is not None:
            return ExportResult(out, config.format, "up_to_date", last["files"], 0, last["files"], 0, last["counts"])
    sets = [read_synth_folder(folder) for folder in find_synth_folders(synth)]
    categories = collect_items(sets, config)
    plan = PLANNERS[config.format](categories, config)
    used = [s for s in sets if any(s.category == c.source_name for c in categories)]
    if dry_run:
        check_destination(config, used, plan.format)  # the real run's refusals, before anything is written
        return plan
    uptodate.forget(out)  # until this run completes, the last run's list no longer describes the folder
    result = run_plan(plan, config, inputs=used, progress=progress)
    written = [pf.rel for pf in plan.files] + [g.rel for g in plan.generated] + [NOTICE_FILE, EXPORT_MANIFEST,
                                                                                  EXPORT_JSON]
    uptodate.remember(out, key, uptodate.watched_inputs(synth, sets, config, plan),
                      uptodate.written_paths(out, written), {"files": result.files, "counts": result.counts},
                      started_ns)
    return result
