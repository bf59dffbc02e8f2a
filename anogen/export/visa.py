"""VisA layout: ``<object>/Data/Images/{Normal,Anomaly}/``, ``<object>/Data/Masks/Anomaly/`` and ``split_csv/1cls.csv``.

The split file decides train/test (columns ``object,split,label,image,mask``; paths relative to the export
root), as in the original data set. Unlike the original (JPEG images, masks with small non-zero values) the
export writes lossless PNG and 0/255 masks, so pixels survive the round trip; readers that take the paths from
the CSV (VisA's own scripts, anomalib's ``Visa`` preparation, ``anogen.data``) do not depend on the extension.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence

from anogen.export.config import ExportConfig
from anogen.export.items import CategoryItems
from anogen.export.planning import ExportPlan, GeneratedFile, PlannedFile, numbered, plan_normal, plan_pair

SPLIT_CSV = "split_csv/1cls.csv"
CSV_COLUMNS = ("object", "split", "label", "image", "mask")


def plan_visa(categories: Sequence[CategoryItems], config: ExportConfig) -> ExportPlan:
    """Plan a VisA tree: one ``<object>/Data`` folder per category and one shared ``split_csv/1cls.csv``."""
    files: list[PlannedFile] = []
    rows: list[tuple[str, str, str, str, str]] = []
    summary: dict[str, dict[str, int]] = {}
    for cat in categories:
        normals = [("train", item) for item in cat.train_normals] + [("test", item) for item in cat.test_normals]
        for stem, (split, item) in zip(numbered(len(normals)), normals, strict=True):
            rel = f"{cat.name}/Data/Images/Normal/{stem}.png"
            files.append(plan_normal(item, rel, cat, split=split))
            rows.append((cat.name, split, "normal", rel, ""))
        anomalies = [item for defect in sorted(cat.anomalies) for item in cat.anomalies[defect]]
        for stem, item in zip(numbered(len(anomalies)), anomalies, strict=True):
            image_rel = f"{cat.name}/Data/Images/Anomaly/{stem}.png"
            mask_rel = f"{cat.name}/Data/Masks/Anomaly/{stem}.png"
            files.extend(plan_pair(item, image_rel, mask_rel, cat))
            rows.append((cat.name, "test", "anomaly", image_rel, mask_rel))
        summary[cat.name] = {
            "train/normal": len(cat.train_normals),
            "test/normal": len(cat.test_normals),
            "test/anomaly": len(anomalies),
            "test/anomaly:real": sum(1 for it in anomalies if it.provenance.kind == "real"),
        }

    def make_csv() -> bytes:
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(CSV_COLUMNS)
        writer.writerows(rows)
        return buffer.getvalue().encode()

    return ExportPlan(
        format="visa",
        files=files,
        generated=[GeneratedFile(SPLIT_CSV, make_csv, role="split")],
        roots=[*(cat.name for cat in categories), "split_csv"],
        categories=list(categories),
        summary=summary,
    )
