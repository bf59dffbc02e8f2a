"""MVTec AD layout: what anomalib's ``MVTecAD`` datamodule and most detectors read without adaptation.

``<category>/train/good/NNN.png``, ``<category>/test/good/NNN.png``, ``<category>/test/<defect>/NNN.png`` and
``<category>/ground_truth/<defect>/NNN_mask.png``. anomalib pairs test images with masks by sorted position and
then checks that each image stem is contained in its mask stem, so every folder is renumbered with fixed-width
stems and holds nothing but the planned PNGs.
"""

from __future__ import annotations

from collections.abc import Sequence

from anogen.export.config import ExportConfig
from anogen.export.items import CategoryItems
from anogen.export.planning import ExportPlan, PlannedFile, numbered, plan_normal, plan_pair


def plan_mvtec(categories: Sequence[CategoryItems], config: ExportConfig) -> ExportPlan:
    """Plan an MVTec AD tree, one ``<category>/`` folder per category.

    Args:
        categories (`Sequence[CategoryItems]`): what each category contributes.
        config (`ExportConfig`): the export's settings (``format`` must be ``mvtec``).
    """
    files: list[PlannedFile] = []
    summary: dict[str, dict[str, int]] = {}
    for cat in categories:
        counts: dict[str, int] = {}
        for split, items in (("train", cat.train_normals), ("test", cat.test_normals)):
            for stem, item in zip(numbered(len(items)), items, strict=True):
                files.append(plan_normal(item, f"{cat.name}/{split}/good/{stem}.png", cat, split=split))
            counts[f"{split}/good"] = len(items)
        for defect in sorted(cat.anomalies):
            items = cat.anomalies[defect]
            for stem, item in zip(numbered(len(items)), items, strict=True):
                image_rel = f"{cat.name}/test/{defect}/{stem}.png"
                mask_rel = f"{cat.name}/ground_truth/{defect}/{stem}_mask.png"
                files.extend(plan_pair(item, image_rel, mask_rel, cat))
            counts[f"test/{defect}"] = len(items)
            counts[f"test/{defect}:real"] = sum(1 for it in items if it.provenance.kind == "real")
        summary[cat.name] = counts
    return ExportPlan(
        format="mvtec",
        files=files,
        generated=[],
        roots=[cat.name for cat in categories],
        categories=list(categories),
        summary=summary,
    )
