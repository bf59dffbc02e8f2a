"""anomalib ``Folder`` layout plus a ready data config that points at it.

``<category>/normal/NNN.png`` (real training normals), ``<category>/normal_test/NNN.png`` (real test normals),
``<category>/abnormal/NNN.png`` (every anomalous image, all defect types, in one flat folder) and
``<category>/mask/NNN_mask.png``. anomalib's ``make_folder_dataset`` sorts every path and pairs abnormal images
with masks by position, then checks the image stem is contained in the mask stem: one flat, renumbered folder
with fixed-width stems is the only layout for which that pairing is unambiguous. The defect type of each file is
in the export manifest. ``<category>/folder.yaml`` is an anomalib data config (``class_path`` + ``init_args``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import yaml

from anogen.export.config import ExportConfig
from anogen.export.items import CategoryItems
from anogen.export.planning import ExportPlan, GeneratedFile, PlannedFile, numbered, plan_normal, plan_pair

FOLDER_CONFIG = "folder.yaml"


def folder_config(cat: CategoryItems, root: Path) -> dict:
    """The anomalib data config for one exported category (``anomalib.data.Folder`` init arguments)."""
    return {
        "class_path": "anomalib.data.Folder",
        "init_args": {
            "name": cat.name,
            "root": str(root),
            "normal_dir": "normal",
            "abnormal_dir": "abnormal",
            "normal_test_dir": "normal_test",
            "mask_dir": "mask",
            "normal_split_ratio": 0.0,
            "extensions": [".png"],
            "test_split_mode": "from_dir",
            # Synthetic anomalies are validation data here; anomalib's "same_as_test" would score on them too.
            "val_split_mode": "from_test",
            "val_split_ratio": 0.5,
            "seed": 0,
        },
    }


def plan_folder(categories: Sequence[CategoryItems], config: ExportConfig) -> ExportPlan:
    """Plan an anomalib Folder layout, one ``<category>/`` folder (and config) per category."""
    files: list[PlannedFile] = []
    generated: list[GeneratedFile] = []
    summary: dict[str, dict[str, int]] = {}
    out = Path(config.out).resolve()
    for cat in categories:
        for folder, split, items in (
            ("normal", "train", cat.train_normals),
            ("normal_test", "test", cat.test_normals),
        ):
            for stem, item in zip(numbered(len(items)), items, strict=True):
                files.append(plan_normal(item, f"{cat.name}/{folder}/{stem}.png", cat, split=split))
        anomalies = [item for defect in sorted(cat.anomalies) for item in cat.anomalies[defect]]
        for stem, item in zip(numbered(len(anomalies)), anomalies, strict=True):
            files.extend(plan_pair(item, f"{cat.name}/abnormal/{stem}.png", f"{cat.name}/mask/{stem}_mask.png", cat))
        text = yaml.safe_dump(folder_config(cat, out / cat.name), sort_keys=False).encode()
        generated.append(GeneratedFile(f"{cat.name}/{FOLDER_CONFIG}", (lambda t=text: t), role="config"))
        summary[cat.name] = {
            "normal": len(cat.train_normals),
            "normal_test": len(cat.test_normals),
            "abnormal": len(anomalies),
            "abnormal:real": sum(1 for it in anomalies if it.provenance.kind == "real"),
        }
    return ExportPlan(
        format="folder",
        files=files,
        generated=generated,
        roots=[cat.name for cat in categories],
        categories=list(categories),
        summary=summary,
    )
