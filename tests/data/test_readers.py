"""Each reader on a tree written in its layout: counts, pairing, kinds, coverage from known mask geometry."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from anogen.data import detect_format, read_category
from anogen.data.model import CategoryKind, Severity
from anogen.errors import DataError
from anogen.io import load_mask
from tests.data.trees import BOX_COVERAGE, write_folder, write_image, write_mask, write_mvtec, write_mvtec2, write_visa


def _errors(category) -> list[str]:
    return [str(p) for p in category.errors]


def test_mvtec_category_folder(tmp_path: Path) -> None:
    folder = write_mvtec(tmp_path, "bottle", {"crack": 3, "broken_large": 2}, train=4, test_good=2)
    category = read_category(folder)
    assert category.dataset_format == "mvtec" and category.name == "bottle"
    assert category.kind is CategoryKind.OBJECT
    assert _errors(category) == [] and category.warnings == []
    assert len(category.train_normals) == 4 and len(category.test_normals) == 2
    assert sorted(category.defects) == ["broken_large", "crack"]
    crack = category.defects["crack"]
    assert [s.stem for s in crack.samples] == ["000", "001", "002"]
    for sample in crack.samples:
        # Pairing by stem: the mask file is the image's stem + _mask, in ground_truth/<defect>.
        assert sample.mask.path == folder / "ground_truth" / "crack" / f"{sample.stem}_mask.png"
        assert sample.image.size == (32, 32) and sample.image.mode == "RGB"
        assert sample.mask_coverage == pytest.approx(BOX_COVERAGE)
        assert sample.mask_coverage == pytest.approx(load_mask(sample.mask.path).mean())
    assert category.image_size == (32, 32) and not category.is_grayscale


def test_mvtec_root_with_category_and_textures(tmp_path: Path) -> None:
    write_mvtec(tmp_path, "bottle")
    write_mvtec(tmp_path, "wood", {"hole": 2})
    assert detect_format(tmp_path) == "mvtec"
    wood = read_category(tmp_path, category="wood")
    assert wood.kind is CategoryKind.TEXTURE and list(wood.defects) == ["hole"]
    # The category folder itself, with its own name repeated as --category, is accepted too.
    assert read_category(tmp_path / "wood", category="wood").root == tmp_path / "wood"
    with pytest.raises(DataError, match="is a dataset root") as info:
        read_category(tmp_path)
    assert info.value.hint == "pass --category NAME (one of: bottle, wood)"
    with pytest.raises(DataError, match="holds no category 'carpet'"):
        read_category(tmp_path, category="carpet")


def test_natural_order_of_samples(tmp_path: Path) -> None:
    folder = tmp_path / "widget"
    for stem in ["10", "2", "1"]:
        write_image(folder / "defects" / "dent" / f"{stem}.png")
        write_mask(folder / "masks" / "dent" / f"{stem}.png")
    write_image(folder / "good" / "a.png")
    category = read_category(folder)
    assert [s.stem for s in category.defects["dent"].samples] == ["1", "2", "10"]


def test_mvtec2(tmp_path: Path) -> None:
    folder = write_mvtec2(tmp_path, "fabric", bad=4, train=3)
    assert detect_format(folder) == "mvtec2"
    category = read_category(folder)
    assert _errors(category) == []
    assert category.kind is CategoryKind.TEXTURE
    # train/good (3) + validation/good (1) are normal training images; test_public/good the test normals.
    assert len(category.train_normals) == 4 and len(category.test_normals) == 1
    assert list(category.defects) == ["bad"]
    bad = category.defects["bad"]
    assert [s.stem for s in bad.samples] == ["000_regular", "001_regular", "002_regular", "003_regular"]
    assert all(s.mask.path.name == f"{s.stem}_mask.png" for s in bad.samples)


def test_visa_split_file(tmp_path: Path) -> None:
    root = write_visa(tmp_path / "VisA", objects=("candle", "pcb1"), anomalies=3, normals=4, mask_value=1)
    assert detect_format(root) == "visa"
    category = read_category(root, category="pcb1")
    assert category.dataset_format == "visa" and category.kind is CategoryKind.OBJECT
    # VisA's 0/1 masks are its documented encoding: binarised silently.
    assert category.problems == []
    assert len(category.train_normals) == 2 and len(category.test_normals) == 2
    assert list(category.defects) == ["anomaly"]
    samples = category.defects["anomaly"].samples
    assert [s.stem for s in samples] == ["000", "001", "002"]
    assert all(s.image.path.parts[-5] == "pcb1" for s in samples)
    assert all(s.image.size == (40, 32) for s in samples)
    assert samples[0].mask_coverage == pytest.approx(96 / (40 * 32))
    # The object folder alone finds the split file in its parent.
    alone = read_category(root / "candle")
    assert alone.name == "candle" and len(alone.test_normals) == 2
    with pytest.raises(DataError, match="holds no category 'fryum'") as info:
        read_category(root, category="fryum")
    assert "candle" in info.value.hint


def test_visa_raw_layout(tmp_path: Path) -> None:
    root = write_visa(tmp_path, objects=("fryum",), anomalies=2, normals=3, split_file=False)
    category = read_category(root / "fryum")
    assert category.problems == []
    assert len(category.train_normals) == 3 and category.test_normals == []
    assert [s.mask.path.name for s in category.defects["anomaly"].samples] == ["000.png", "001.png"]
    assert read_category(root, category="fryum").defects.keys() == {"anomaly"}


def test_visa_split_file_missing_image(tmp_path: Path) -> None:
    root = write_visa(tmp_path, objects=("candle",))
    gone = root / "candle" / "Data" / "Images" / "Anomaly" / "001.JPG"
    gone.unlink()
    category = read_category(root, category="candle")
    assert any(p.path == gone and "does not exist" in p.message for p in category.errors)
    assert len(category.defects["anomaly"].samples) == 2


def test_folder_layout_defaults_and_mask_suffix(tmp_path: Path) -> None:
    folder = write_folder(tmp_path, "widget", {"dent": 3, "stain": 4}, mask_suffix="_mask")
    assert detect_format(folder) == "folder"
    category = read_category(folder)
    assert _errors(category) == [] and category.kind is None
    assert {k: len(v.samples) for k, v in category.defects.items()} == {"dent": 3, "stain": 4}
    assert category.defects["stain"].samples[3].mask.path.name == "img_3_mask.png"


def test_folder_layout_config_file(tmp_path: Path) -> None:
    config = "name: gear\nkind: texture\nnormal: ok\ndefects: bad\nmasks: gt\nmask_suffix: ''\n"
    folder = write_folder(
        tmp_path, "product 1", {"burr": 2}, config=config, good="ok", defects_dir="bad", masks_dir="gt"
    )
    category = read_category(folder, dataset_format="folder")
    assert _errors(category) == []
    assert category.name == "gear" and category.kind is CategoryKind.TEXTURE
    assert len(category.train_normals) == 3 and len(category.defects["burr"].samples) == 2


def test_folder_config_unknown_key_is_named(tmp_path: Path) -> None:
    folder = write_folder(tmp_path, config="normals: good\n")
    with pytest.raises(DataError, match="unknown key 'normals'"):
        read_category(folder)


def test_toy_marker_makes_the_toy_format(tmp_path: Path) -> None:
    folder = write_mvtec(tmp_path, "object")
    (folder / "toy.json").write_text('{"kind": "texture"}')
    assert detect_format(folder) == "toy"
    for fmt in ("auto", "mvtec"):
        category = read_category(folder, dataset_format=fmt)
        assert category.dataset_format == "toy" and category.kind is CategoryKind.TEXTURE


@pytest.mark.parametrize("name", ["test data", "données test", "my test"])
def test_root_paths_with_spaces_test_and_non_ascii(tmp_path: Path, name: str) -> None:
    root = tmp_path / name / "test"
    folder = write_mvtec(root, "bottle")
    category = read_category(root, category="bottle")
    assert category.problems == []
    assert category.defects["crack"].samples[0].mask.path == folder / "ground_truth" / "crack" / "000_mask.png"


def test_errors_raised_for_missing_path_and_unknown_layout(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        read_category(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="cannot tell the dataset layout"):
        read_category(tmp_path / "empty")
    with pytest.raises(DataError, match="unknown dataset format"):
        read_category(tmp_path / "empty", dataset_format="coco")
    (tmp_path / "file.png").write_bytes(b"x")
    with pytest.raises(DataError, match="is not a folder"):
        read_category(tmp_path / "file.png")


def test_quirky_modes_are_read_and_reported(tmp_path: Path) -> None:
    folder = write_mvtec(tmp_path, "bottle", {"crack": 3})
    write_image(folder / "train" / "good" / "000.png", mode="L")
    write_image(folder / "train" / "good" / "001.png", mode="RGBA")
    write_image(folder / "test" / "crack" / "000.png", mode="I;16")
    category = read_category(folder)
    assert category.errors == []
    messages = {(p.path, p.message) for p in category.warnings}
    assert (folder / "train" / "good" / "000.png", "grayscale (L), read as RGB") in messages
    assert any(path.name == "001.png" and "RGBA" in msg for path, msg in messages)
    assert any(path.name == "000.png" and "16-bit" in msg for path, msg in messages)
    assert {s.image.mode for s in category.defects["crack"].samples} == {"I;16", "RGB"}


def test_conversion_warnings_fold_per_folder(tmp_path: Path) -> None:
    folder = write_mvtec(tmp_path, "grid", {"bent": 2}, train=5)
    for i in range(5):
        write_image(folder / "train" / "good" / f"{i:03d}.png", mode="L", seed=i)
    category = read_category(folder)
    folded = [p for p in category.warnings if "grayscale" in p.message]
    assert len(folded) == 1
    assert folded[0].path == folder / "train" / "good" and folded[0].message.startswith("5 files:")


def test_mask_values(tmp_path: Path) -> None:
    folder = write_mvtec(tmp_path, "bottle", {"crack": 4})
    gt = folder / "ground_truth" / "crack"
    write_mask(gt / "000_mask.png", value=1)
    write_mask(gt / "001_mask.png", value=128)
    Image.fromarray(np.where(np.asarray(Image.open(gt / "002_mask.png")) > 0, 65535, 0).astype(np.uint16)).save(
        gt / "002_mask.png"
    )
    write_mask(gt / "003_mask.png", value=0)
    category = read_category(folder)
    assert category.errors == []
    by_file = {p.path.name: p.message for p in category.warnings}
    assert "0/1" in by_file["000_mask.png"]
    assert "non-binary" in by_file["001_mask.png"]
    assert "16-bit" in by_file["002_mask.png"]
    assert "empty" in by_file["003_mask.png"]
    coverages = [s.mask_coverage for s in category.defects["crack"].samples]
    assert coverages == pytest.approx([BOX_COVERAGE, BOX_COVERAGE, BOX_COVERAGE, 0.0])


def test_hidden_and_stray_files(tmp_path: Path) -> None:
    folder = write_mvtec(tmp_path, "bottle", {"crack": 2})
    (folder / "test" / "crack" / ".DS_Store").write_bytes(b"\0\1")
    (folder / "test" / "crack" / "._000.png").write_bytes(b"junk")  # AppleDouble: hidden, not an image
    (folder / "ground_truth" / "crack" / ".hidden_mask.png").write_bytes(b"junk")
    (folder / "train" / "good" / "notes.txt").write_text("taken on monday")
    category = read_category(folder)
    assert category.errors == []
    assert [(p.path.name, p.severity) for p in category.problems] == [("notes.txt", Severity.WARNING)]
    assert len(category.defects["crack"].samples) == 2 and len(category.train_normals) == 4


def test_reader_never_rewrites_test_in_paths(tmp_path: Path) -> None:
    # A root called "test" holding a category called "test": only the category's own test/ folder is special.
    folder = write_mvtec(tmp_path / "test", "test", {"test": 2})
    category = read_category(folder)
    assert category.problems == []
    assert category.defects["test"].samples[1].mask.path == folder / "ground_truth" / "test" / "001_mask.png"
    shutil.rmtree(folder / "ground_truth")
    assert "missing mask folder" in read_category(folder).errors[0].message


def test_progress_counts_images(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = write_mvtec(tmp_path, "bottle", {"crack": 3, "scratch": 2}, train=4, test_good=2)
    events = []
    read_category(folder, progress=events.append)
    assert events == []  # 11 images: below one progress interval, nothing to show
    monkeypatch.setattr("anogen.data.check.PROGRESS_EVERY", 2)
    read_category(folder, progress=events.append)
    assert [e.completed for e in events] == [2, 4, 6, 8, 10]
    assert {e.task for e in events} == {"reading images"}


def test_unlistable_folder_is_an_error_not_a_crash(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = write_mvtec(tmp_path, "bottle", {"crack": 2})
    locked = folder / "test" / "crack"
    real_iterdir = Path.iterdir

    def iterdir(self: Path):
        if self == locked:
            raise PermissionError(13, "Permission denied")
        return real_iterdir(self)

    monkeypatch.setattr(Path, "iterdir", iterdir)
    category = read_category(folder)
    assert any(p.path == locked and "cannot list folder (Permission denied)" in p.message for p in category.errors)


def test_visa_split_file_with_byte_order_mark(tmp_path: Path) -> None:
    root = write_visa(tmp_path, objects=("cashew",))
    split_file = root / "split_csv" / "1cls.csv"
    split_file.write_bytes(b"\xef\xbb\xbf" + split_file.read_bytes())
    category = read_category(root, category="cashew")
    assert category.problems == [] and len(category.defects["anomaly"].samples) == 3
