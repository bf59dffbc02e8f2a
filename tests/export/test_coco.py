"""COCO export loaded by pycocotools.coco.COCO: annotations decode to exactly the exported masks."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from helpers import resized_mask
from PIL import Image

from anogen.export import ExportConfig, export


def _bbox(mask: np.ndarray) -> list[float]:
    ys, xs = np.nonzero(mask)
    return [float(xs.min()), float(ys.min()), float(xs.max() - xs.min() + 1), float(ys.max() - ys.min() + 1)]


@pytest.mark.parametrize("per_mask", [False, True])
def test_coco_round_trip(world: dict[str, Path], per_mask: bool) -> None:
    from pycocotools.coco import COCO

    out = world["tmp"] / "coco"
    export(
        [world["synth"]],
        ExportConfig(format="coco", out=out, data=world["data"], include_real_test=True, coco_per_mask=per_mask),
    )
    coco = COCO(str(out / "annotations" / "instances.json"))
    names = {c["name"]: c for c in coco.loadCats(coco.getCatIds())}
    assert set(names) == {"crack", "scratch"} and names["crack"]["supercategory"] == "widget"
    rows = {r["path"]: r for r in map(json.loads, (out / "export_manifest.jsonl").read_text().splitlines())}
    assert len(coco.getImgIds()) == 11
    for image_id in coco.getImgIds():
        info = coco.loadImgs(image_id)[0]
        image_path = out / "images" / info["file_name"]
        with Image.open(image_path) as img:
            assert img.size == (info["width"], info["height"]) == (40, 40)
        source = rows[f"images/{info['file_name']}"]["source"]
        if source["kind"] == "synthetic":
            src_mask = Path(source["synth_dir"]) / "mask" / f"{source['id']:06d}.png"
        else:
            src_mask = world["data"] / "ground_truth" / source["defect"] / f"{source['stem']}_mask.png"
        expected = resized_mask(src_mask, (40, 40))
        anns = coco.loadAnns(coco.getAnnIds(imgIds=image_id))
        # The drawn masks are a disc and a bar: two 8-connected components, or one annotation per mask.
        assert len(anns) == (1 if per_mask else 2)
        union = np.zeros_like(expected)
        for ann in anns:
            assert isinstance(ann["segmentation"]["counts"], str)
            assert coco.loadCats(ann["category_id"])[0]["name"] == source["defect"]
            decoded = coco.annToMask(ann).astype(bool)
            assert not (union & decoded).any()
            union |= decoded
            assert ann["area"] == pytest.approx(decoded.sum())
            assert ann["bbox"] == pytest.approx(_bbox(decoded))
        assert np.array_equal(union, expected)
