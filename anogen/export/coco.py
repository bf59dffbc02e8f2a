"""COCO instances: ``images/<category>/<defect>/NNN.png`` plus ``annotations/instances.json``.

Categories are the defect types (``supercategory`` = the data set category). Each anomalous image gets one
annotation per 8-connected component of its mask (or one per mask with ``coco_per_mask``), ``segmentation`` as
uncompressed-to-compressed RLE from ``pycocotools.mask.encode`` with ``counts`` decoded to ``str`` so the file is
plain JSON, and ``area``/``bbox`` computed by pycocotools from that same RLE. Normal images are not part of a
COCO export (they carry no instances); the MVTec, Folder and VisA layouts hold them.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import numpy as np

from anogen import __version__
from anogen.export.config import ExportConfig
from anogen.export.items import CategoryItems
from anogen.export.pixels import render_mask
from anogen.export.planning import ExportPlan, GeneratedFile, PlannedFile, numbered, plan_pair

INSTANCES = "annotations/instances.json"


def mask_annotations(mask: np.ndarray, *, per_mask: bool = False) -> list[dict[str, Any]]:
    """RLE annotations (without ids) of a boolean HxW mask: one per 8-connected component, or one in all.

    Returns a list of ``{"segmentation", "area", "bbox", "iscrowd"}`` dicts; empty for an empty mask.
    """
    from pycocotools import mask as mask_utils
    from scipy import ndimage

    binary = np.asarray(mask) > 0
    if not binary.any():
        return []
    if per_mask:
        parts = [binary]
    else:
        labels, count = ndimage.label(binary, structure=np.ones((3, 3), dtype=bool))
        parts = [labels == index for index in range(1, count + 1)]
    annotations = []
    for part in parts:
        rle = mask_utils.encode(np.asfortranarray(part.astype(np.uint8)))
        area = float(mask_utils.area(rle))
        bbox = [float(v) for v in mask_utils.toBbox(rle)]
        rle["counts"] = rle["counts"].decode("ascii")
        annotations.append({"segmentation": rle, "area": area, "bbox": bbox, "iscrowd": 0})
    return annotations


def plan_coco(categories: Sequence[CategoryItems], config: ExportConfig) -> ExportPlan:
    """Plan a COCO export of every anomalous image (synthetic, and real held-out by option)."""
    files: list[PlannedFile] = []
    images: list[tuple[PlannedFile, PlannedFile, tuple[str, str]]] = []
    coco_categories: list[tuple[str, str]] = []
    summary: dict[str, dict[str, int]] = {}
    for cat in categories:
        counts: dict[str, int] = {}
        for defect in sorted(cat.anomalies):
            items = cat.anomalies[defect]
            coco_categories.append((cat.source_name, cat.defect_names.get(defect, defect)))
            for stem, item in zip(numbered(len(items)), items, strict=True):
                image_rel = f"images/{cat.name}/{defect}/{stem}.png"
                # The mask is not written (COCO carries it as RLE); its plan entry only feeds the annotations.
                image_pf, mask_pf = plan_pair(item, image_rel, f"masks/{cat.name}/{defect}/{stem}.png", cat)
                files.append(image_pf)
                images.append((image_pf, mask_pf, (cat.source_name, cat.defect_names.get(defect, defect))))
            counts[defect] = len(items)
        summary[cat.name] = counts
    category_ids = {key: index + 1 for index, key in enumerate(coco_categories)}

    def make_json() -> bytes:
        doc: dict[str, Any] = {
            "info": {"description": "anogen export", "version": __version__},
            "licenses": [],
            "images": [],
            "annotations": [],
            "categories": [
                {"id": category_ids[key], "name": key[1], "supercategory": key[0]} for key in coco_categories
            ],
        }
        next_ann = 1
        for image_id, (image_pf, mask_pf, key) in enumerate(images, start=1):
            width, height = image_pf.size
            doc["images"].append(
                {
                    "id": image_id,
                    "file_name": image_pf.rel.removeprefix("images/"),
                    "width": width,
                    "height": height,
                    "source": image_pf.provenance.kind,
                }
            )
            mask = render_mask(mask_pf.src, image_pf.size) > 0
            for ann in mask_annotations(mask, per_mask=config.coco_per_mask):
                doc["annotations"].append(
                    {"id": next_ann, "image_id": image_id, "category_id": category_ids[key], **ann}
                )
                next_ann += 1
        return (json.dumps(doc, sort_keys=True) + "\n").encode()

    return ExportPlan(
        format="coco",
        files=files,
        generated=[GeneratedFile(INSTANCES, make_json, role="annotations")],
        roots=["images", "annotations"],
        categories=list(categories),
        summary=summary,
        depends=[mask_pf.src for _, mask_pf, _ in images],
    )
