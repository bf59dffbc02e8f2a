"""anomalib Folder layout (read back with anomalib's make_folder_dataset rules) and VisA (read back by anogen.data)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import yaml
from helpers import read_rows, resized_image, resized_mask
from PIL import Image

from anogen.export import ExportConfig, export


def folder_style_read(root: Path, normal_dir: str, abnormal_dir: str, normal_test_dir: str, mask_dir: str):
    """anomalib's ``make_folder_dataset`` rules: every file of the four folders in one table sorted by path;
    mask files assigned to abnormal images by sorted position; the image stem must be in the mask stem."""
    table = []
    for label, folder in (
        ("normal", normal_dir),
        ("abnormal", abnormal_dir),
        ("normal_test", normal_test_dir),
        ("mask", mask_dir),
    ):
        files = [f for f in (root / folder).glob("**/*") if f.is_file()]
        assert all(f.suffix == ".png" for f in files), files
        table += [(str(f), label) for f in files]
    table.sort(key=lambda row: row[0])
    masks = [Path(p) for p, label in table if label == "mask"]
    abnormal = [Path(p) for p, label in table if label == "abnormal"]
    assert len(masks) == len(abnormal)
    pairs = list(zip(abnormal, masks, strict=True))
    for image, mask in pairs:
        assert image.stem in mask.stem, (image, mask)
    normal = [Path(p) for p, label in table if label == "normal"]
    normal_test = [Path(p) for p, label in table if label == "normal_test"]
    return normal, normal_test, pairs


def _expected_anomalies(world: dict[str, Path]) -> list[tuple[Path, Path]]:
    real = world["data"]
    crack = world["synth"] / "widget" / "crack"
    scratch = world["synth"] / "widget" / "scratch"
    out = [
        (real / "test" / "crack" / f"{s}.png", real / "ground_truth" / "crack" / f"{s}_mask.png")
        for s in ("002", "003", "004", "005")
    ]
    out += [(crack / "image" / f"{i:06d}.png", crack / "mask" / f"{i:06d}.png") for i in (0, 1, 3, 4, 5)]
    out += [(scratch / "image" / f"{i:06d}.png", scratch / "mask" / f"{i:06d}.png") for i in (1, 2)]
    return out


def test_folder_layout_and_config(world: dict[str, Path]) -> None:
    out = world["tmp"] / "folder"
    export([world["synth"]], ExportConfig(format="folder", out=out, data=world["data"], include_real_test=True))
    config = yaml.safe_load((out / "widget" / "folder.yaml").read_text())
    assert config["class_path"] == "anomalib.data.Folder"
    args = config["init_args"]
    root = Path(args["root"])
    assert root == (out / "widget").resolve()
    normal, normal_test, pairs = folder_style_read(
        root, args["normal_dir"], args["abnormal_dir"], args["normal_test_dir"], args["mask_dir"]
    )
    assert len(normal) == 3 and len(normal_test) == 2
    for got, src in zip(normal, sorted((world["data"] / "train" / "good").iterdir()), strict=True):
        assert np.array_equal(np.asarray(Image.open(got)), resized_image(src, (40, 40), "RGB"))
    expected = _expected_anomalies(world)
    assert len(pairs) == len(expected)
    for (image, mask), (src_image, src_mask) in zip(pairs, expected, strict=True):
        assert np.array_equal(np.asarray(Image.open(image)), resized_image(src_image, (40, 40), "RGB"))
        m = np.asarray(Image.open(mask))
        assert m.shape == (40, 40) and set(np.unique(m).tolist()) <= {0, 255}
        assert np.array_equal(m > 0, resized_mask(src_mask, (40, 40)))


def test_visa_layout_read_back_by_project_reader(world: dict[str, Path]) -> None:
    from anogen.data import read_category

    out = world["tmp"] / "visa"
    export([world["synth"]], ExportConfig(format="visa", out=out, data=world["data"], include_real_test=True))
    with open(out / "split_csv" / "1cls.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == ["object", "split", "label", "image", "mask"]
    cat = read_category(out, category="widget", dataset_format="visa")
    assert not cat.errors, cat.errors
    assert len(cat.train_normals) == 3 and len(cat.test_normals) == 2
    for info, src in zip(cat.train_normals, sorted((world["data"] / "train" / "good").iterdir()), strict=True):
        assert np.array_equal(np.asarray(Image.open(info.path)), resized_image(src, (40, 40), "RGB"))
    samples = cat.defects["anomaly"].samples
    expected = _expected_anomalies(world)
    assert len(samples) == len(expected)
    for sample, (src_image, src_mask) in zip(samples, expected, strict=True):
        assert np.array_equal(np.asarray(Image.open(sample.image.path)), resized_image(src_image, (40, 40), "RGB"))
        assert np.array_equal(np.asarray(Image.open(sample.mask.path)) > 0, resized_mask(src_mask, (40, 40)))
    # The manifest knows the defect type the flat VisA folders lose.
    manifest = {r["path"]: r for r in read_rows(out / "export_manifest.jsonl")}
    defects = [manifest[Path(s.image.path).relative_to(out).as_posix()]["defect"] for s in samples]
    assert defects == ["crack"] * 9 + ["scratch"] * 2
