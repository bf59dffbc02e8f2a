# ruff: noqa: T201  (a command-line check: printing its findings is its job)
"""Read an anogen export with real anomalib and check it against the export manifest.

Runs inside the environment that scripts/check_with_anomalib.sh builds (anomalib, torch, torchvision); it
imports nothing from anogen, so it is an independent consumer. Usage:

    python scripts/check_with_anomalib.py EXPORT_DIR CATEGORY mvtec|folder

Checks, for every anomalous test sample anomalib builds: its mask is the file the export manifest pairs with
the image, anomalib's loaded mask equals that PNG > 0, and the label is anomalous; normal samples have no mask.
Exit code 0 when everything matches, 1 otherwise.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image


def _records(frame) -> list[dict]:
    if hasattr(frame, "to_dicts"):  # polars (anomalib >= 2.1)
        return frame.to_dicts()
    return frame.to_dict("records")  # pandas


def _dataset(export: Path, category: str, fmt: str):
    if fmt == "mvtec":
        try:
            from anomalib.data.datasets.image.mvtecad import MVTecADDataset
        except ImportError:  # anomalib 1.x
            from anomalib.data.image.mvtec import MVTecDataset as MVTecADDataset
        return MVTecADDataset(root=export, category=category, split="test")
    try:
        from anomalib.data.datasets.image.folder import FolderDataset
    except ImportError:
        from anomalib.data.image.folder import FolderDataset
    return FolderDataset(
        name=category,
        root=export / category,
        normal_dir="normal",
        abnormal_dir="abnormal",
        normal_test_dir="normal_test",
        mask_dir="mask",
        split="test",
    )


def main(export: Path, category: str, fmt: str) -> int:
    manifest = {}
    for line in (export / "export_manifest.jsonl").read_text().splitlines():
        row = json.loads(line)
        manifest[str((export / row["path"]).resolve())] = row
    dataset = _dataset(export, category, fmt)
    rows = _records(dataset.samples)
    failures = 0
    anomalous = 0
    for index, row in enumerate(rows):
        image = str(Path(row["image_path"]).resolve())
        entry = manifest.get(image)
        if entry is None:
            print(f"FAIL {image}: not in the export manifest")
            failures += 1
            continue
        mask_path = row.get("mask_path") or ""
        if entry["label"] == "normal":
            if mask_path or int(row["label_index"]) != 0:
                print(f"FAIL {image}: normal image read as anomalous")
                failures += 1
            continue
        anomalous += 1
        expected_mask = str((export / entry["pair"]).resolve())
        if str(Path(mask_path).resolve()) != expected_mask or int(row["label_index"]) != 1:
            print(f"FAIL {image}: anomalib paired it with {mask_path!r}, the manifest with {expected_mask!r}")
            failures += 1
            continue
        item = dataset[index]
        gt = getattr(item, "gt_mask", None)
        if gt is None and isinstance(item, dict):
            gt = item.get("mask")
        got = np.asarray(gt).astype(bool).squeeze()
        want = np.asarray(Image.open(expected_mask)) > 0
        if got.shape != want.shape or not np.array_equal(got, want):
            print(f"FAIL {image}: the mask anomalib loaded differs from {expected_mask}")
            failures += 1
    print(f"{len(rows)} samples ({anomalous} anomalous) read by anomalib; {failures} failure(s)")
    return 1 if failures or not anomalous else 0


if __name__ == "__main__":
    if len(sys.argv) != 4 or sys.argv[3] not in ("mvtec", "folder"):
        print(__doc__)
        sys.exit(2)
    sys.exit(main(Path(sys.argv[1]).resolve(), sys.argv[2], sys.argv[3]))
