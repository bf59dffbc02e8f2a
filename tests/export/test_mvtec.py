"""MVTec export read back by an independent reader that applies anomalib's MVTecAD rules."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from helpers import read_rows, resized_image, resized_mask
from PIL import Image

from anogen.export import ExportConfig, export


def anomalib_style_read(root: Path, category: str) -> dict[str, list[tuple[Path, Path | None]]]:
    """Read an MVTec tree the way anomalib's ``make_mvtec_ad_dataset`` does.

    Every PNG under ``train/``, ``test/`` and ``ground_truth/`` is listed; anomalous test images and masks are
    each sorted and paired by position, and each image stem must be contained in its mask stem. Anything that
    is not a PNG in those folders is an error here (anomalib would silently skip it, hiding a broken export).
    """
    cat = root / category
    result: dict[str, list[tuple[Path, Path | None]]] = {}
    for split in ("train", "test"):
        for label_dir in sorted((cat / split).iterdir()):
            files = sorted(label_dir.iterdir())
            assert all(f.suffix == ".png" and f.is_file() for f in files), f"stray file in {label_dir}: {files}"
            if label_dir.name == "good":
                result[f"{split}/good"] = [(f, None) for f in files]
                continue
            masks = sorted((cat / "ground_truth" / label_dir.name).iterdir())
            assert all(m.suffix == ".png" for m in masks)
            assert len(masks) == len(files), f"{label_dir}: {len(files)} images, {len(masks)} masks"
            pairs = list(zip(files, masks, strict=True))
            for image, mask in pairs:
                assert image.stem in mask.stem, (image, mask)
            result[f"{split}/{label_dir.name}"] = pairs
    gt_dirs = {d.name for d in (cat / "ground_truth").iterdir()}
    assert gt_dirs == {k.split("/")[1] for k in result if k.startswith("test/") and k != "test/good"}
    return result


def _check_mask_file(mask_path: Path, image_size: tuple[int, int]) -> np.ndarray:
    with Image.open(mask_path) as m:
        assert m.mode == "L" and m.size == image_size, (mask_path, m.mode, m.size)
        arr = np.asarray(m)
    assert set(np.unique(arr).tolist()) <= {0, 255}
    assert arr.any(), f"{mask_path} is empty"
    return arr > 0


def test_mvtec_tree_reads_back_exactly(world: dict[str, Path]) -> None:
    out = world["tmp"] / "out"
    result = export(
        [world["synth"]],
        ExportConfig(format="mvtec", out=out, data=world["data"], include_real_test=True),
    )
    assert result.status == "written"
    tree = anomalib_style_read(out, "widget")
    assert sorted(tree) == ["test/crack", "test/good", "test/scratch", "train/good"]
    real = world["data"]
    # Normals: every real image, renumbered, pixel-equal (no resize needed at source size).
    for key, folder in (("train/good", real / "train" / "good"), ("test/good", real / "test" / "good")):
        sources = sorted(folder.iterdir())
        assert [p.name for p, _ in tree[key]] == [f"{i:03d}.png" for i in range(len(sources))]
        for (exported, _), source in zip(tree[key], sources, strict=True):
            assert np.array_equal(resized_image(exported, (40, 40), "RGB"), resized_image(source, (40, 40), "RGB"))

    # Defect folders: the real held-out crack images 002..005 (never the training shots 000, 001), then the
    # accepted synthetic attempts 0, 1, 3, 4, 5 (attempt 2 was rejected), resized 32 -> 40.
    synth_crack = world["synth"] / "widget" / "crack"
    expected_crack = [
        (real / "test" / "crack" / f"{s}.png", real / "ground_truth" / "crack" / f"{s}_mask.png")
        for s in ("002", "003", "004", "005")
    ]
    expected_crack += [
        (synth_crack / "image" / f"{i:06d}.png", synth_crack / "mask" / f"{i:06d}.png") for i in (0, 1, 3, 4, 5)
    ]
    synth_scratch = world["synth"] / "widget" / "scratch"
    expected = {
        "test/crack": expected_crack,
        "test/scratch": [
            (synth_scratch / "image" / f"{i:06d}.png", synth_scratch / "mask" / f"{i:06d}.png") for i in (1, 2)
        ],
    }
    for key, sources in expected.items():
        assert len(tree[key]) == len(sources), key
        for (image, mask), (src_image, src_mask) in zip(tree[key], sources, strict=True):
            assert np.array_equal(np.asarray(Image.open(image)), resized_image(src_image, (40, 40), "RGB"))
            got = _check_mask_file(mask, (40, 40))
            assert np.array_equal(got, resized_mask(src_mask, (40, 40)))

    # The export manifest maps every file back to its source.
    rows = {r["path"]: r for r in read_rows(out / "export_manifest.jsonl")}
    for pairs in tree.values():
        for image, mask in pairs:
            row = rows[image.relative_to(out).as_posix()]
            assert row["source"]["kind"] in ("real", "synthetic")
            if mask is not None:
                assert row["pair"] == mask.relative_to(out).as_posix()
    synth_rows = [r for r in rows.values() if r["source"].get("kind") == "synthetic" and r["role"] == "image"]
    assert {(r["source"]["defect"], r["source"]["id"]) for r in synth_rows} == {
        ("crack", i) for i in (0, 1, 3, 4, 5)
    } | {("scratch", 1), ("scratch", 2)}
    assert all(r["source"]["seed"] == 5000 + r["source"]["id"] for r in synth_rows)
    assert all(r["source"]["adapter_sha256"] == "ab" * 32 for r in synth_rows)
    real_sources = {
        Path(r["source"]["path"]).name
        for r in rows.values()
        if r["source"].get("defect") == "crack" and r["source"]["kind"] == "real" and r["role"] == "image"
    }
    assert real_sources == {"002.png", "003.png", "004.png", "005.png"}
    notice = (out / "LICENSE-NOTICE.txt").read_text()
    assert "MVTec AD" in notice and "CC BY-NC-SA 4.0" in notice
    record = json.loads((out / "export.json").read_text())
    assert record["format"] == "mvtec" and record["schema_version"] == 1
    assert record["files"] == len(rows)


def test_without_real_test_only_synthetic_anomalies(world: dict[str, Path]) -> None:
    out = world["tmp"] / "out"
    export([world["synth"]], ExportConfig(format="mvtec", out=out, data=world["data"]))
    tree = anomalib_style_read(out, "widget")
    assert len(tree["test/crack"]) == 5 and len(tree["test/scratch"]) == 2


def test_count_cutoff_and_explicit_size(world: dict[str, Path]) -> None:
    """run.json count 2 keeps the first two accepted attempts (0, 1); --size 64 resizes masks nearest."""
    from helpers import make_synth

    synth = world["tmp"] / "synth2"
    folder = make_synth(synth, defect="crack", count=2)
    out = world["tmp"] / "out"
    export([synth], ExportConfig(format="mvtec", out=out, data=world["data"], size=64))
    tree = anomalib_style_read(out, "widget")
    assert len(tree["test/crack"]) == 2
    for (image, mask), i in zip(tree["test/crack"], (0, 1), strict=True):
        assert Image.open(image).size == (64, 64)
        got = _check_mask_file(mask, (64, 64))
        assert np.array_equal(got, resized_mask(folder / "mask" / f"{i:06d}.png", (64, 64)))
    assert all(Image.open(p).size == (64, 64) for p, _ in tree["train/good"])


def test_grayscale_category_stays_grayscale(tmp_path: Path) -> None:
    from helpers import make_mvtec, make_synth

    data = make_mvtec(tmp_path / "data", grayscale=True, size=36)
    synth = tmp_path / "synth"
    folder = make_synth(synth)
    out = tmp_path / "out"
    export([synth], ExportConfig(format="mvtec", out=out, data=data))
    tree = anomalib_style_read(out, "widget")
    for key, pairs in tree.items():
        for image, mask in pairs:
            with Image.open(image) as img:
                assert img.mode == "L" and img.size == (36, 36), (key, img.mode)
            if mask is not None:
                _check_mask_file(mask, (36, 36))
    first = tree["test/crack"][0][0]
    assert np.array_equal(np.asarray(Image.open(first)), resized_image(folder / "image" / "000000.png", (36, 36), "L"))


def test_native_size_keeps_generated_resolution(world: dict[str, Path]) -> None:
    out = world["tmp"] / "out"
    export([world["synth"]], ExportConfig(format="mvtec", out=out, data=world["data"], size="native"))
    tree = anomalib_style_read(out, "widget")
    for image, mask in tree["test/crack"]:
        assert Image.open(image).size == (32, 32)
        _check_mask_file(mask, (32, 32))
    assert Image.open(tree["train/good"][0][0]).size == (40, 40)


def test_include_real_test_needs_a_recorded_split(tmp_path: Path) -> None:
    from helpers import make_mvtec, make_synth

    from anogen.errors import InputError

    data = make_mvtec(tmp_path / "data")
    make_synth(tmp_path / "synth")  # no split in run.json, no adapter.json
    with pytest.raises(InputError, match="no few-shot split"):
        export(
            [tmp_path / "synth"], ExportConfig(format="mvtec", out=tmp_path / "o", data=data, include_real_test=True)
        )


def test_split_read_from_adapter_json(tmp_path: Path) -> None:
    """Without run.json ``split`` the adapter's adapter.json split decides the held-out images."""
    from helpers import make_mvtec, make_synth

    data = make_mvtec(tmp_path / "data")
    make_synth(tmp_path / "synth")
    adapter_dir = tmp_path / "synth" / "runs" / "widget" / "crack"  # make_synth's adapter path
    adapter_dir.mkdir(parents=True)
    (adapter_dir / "adapter.json").write_text(
        json.dumps({"split": {"train": ["000", "001", "002"], "held_out": ["003", "004", "005"]}})
    )
    out = tmp_path / "o"
    export([tmp_path / "synth" / "widget"], ExportConfig(format="mvtec", out=out, data=data, include_real_test=True))
    rows = read_rows(out / "export_manifest.jsonl")
    real = sorted(
        Path(r["source"]["path"]).name
        for r in rows
        if r["role"] == "image"
        and r["source"].get("kind") == "real"
        and r["split"] == "test"
        and r["label"] == "anomaly"
    )
    assert real == ["003.png", "004.png", "005.png"]


def test_data_root_with_several_categories(tmp_path: Path) -> None:
    """--data may be the data set root: each synth category reads its own real category from it."""
    from helpers import make_mvtec, make_synth

    from anogen.errors import InputError

    make_mvtec(tmp_path / "data", category="widget", size=40)
    make_mvtec(tmp_path / "data", category="gadget", size=48, grayscale=True)
    make_synth(tmp_path / "synth", category="widget")
    make_synth(tmp_path / "synth", category="gadget")
    out = tmp_path / "out"
    export([tmp_path / "synth"], ExportConfig(format="mvtec", out=out, data=tmp_path / "data"))
    widget = anomalib_style_read(out, "widget")
    gadget = anomalib_style_read(out, "gadget")
    assert Image.open(widget["test/crack"][0][0]).size == (40, 40)
    with Image.open(gadget["test/crack"][0][0]) as img:
        assert img.size == (48, 48) and img.mode == "L"
    record = json.loads((out / "export.json").read_text())
    assert {c["name"]: Path(c["data_root"]).name for c in record["categories"]} == {
        "gadget": "gadget",
        "widget": "widget",
    }
    # One category folder for two synth categories would pair gadget samples with widget normals: refused.
    with pytest.raises(InputError, match="is one category folder"):
        export(
            [tmp_path / "synth"], ExportConfig(format="mvtec", out=tmp_path / "o2", data=tmp_path / "data" / "widget")
        )
    only = tmp_path / "o3"
    export(
        [tmp_path / "synth"],
        ExportConfig(format="mvtec", out=only, data=tmp_path / "data" / "widget", category="widget"),
    )
    assert [p.name for p in only.iterdir() if p.is_dir()] == ["widget"]
