"""``anogen data check`` through the CLI on valid, broken and quirky trees: exit codes and one-line messages."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from anogen.cli.app import app
from tests.data.trees import write_folder, write_image, write_mask, write_mvtec, write_mvtec2, write_visa

runner = CliRunner()


def check(*args: str | Path):
    return runner.invoke(app, ["data", "check", *map(str, args)])


def _has_line(text: str, *parts: str) -> bool:
    """Whether one line of ``text`` holds every part (a problem is reported on one line, naming its file)."""
    return any(all(part in line for part in parts) for line in text.splitlines())


# ----------------------------------------------------------------------------------------- valid trees


def test_table_for_each_layout(tmp_path: Path) -> None:
    trees = {
        "mvtec": (write_mvtec(tmp_path / "a", "bottle", {"crack": 6}), [], "crack"),
        "mvtec2": (write_mvtec2(tmp_path / "b", "can"), [], "bad"),
        "visa": (write_visa(tmp_path / "c"), ["--category", "candle"], "anomaly"),
        "folder": (write_folder(tmp_path / "d", "widget", {"dent": 6}), [], "dent"),
    }
    for fmt, (path, extra, defect) in trees.items():
        result = check(path, *extra)
        assert result.exit_code == 0, (fmt, result.output)
        assert f"({fmt}, " in result.stdout
        assert _has_line(result.stdout, defect) and "train / held out" in result.stdout
    # 6 images: 2 train, 4 held out; 96 of 1024 mask pixels = 9.38 %
    result = check(trees["mvtec"][0])
    assert _has_line(result.stdout, "crack", " 6 ", "2 / 4", "32x32", "9.38%", "none")
    assert "preset mvtec/bottle" in result.stdout


def test_json_and_shots(tmp_path: Path) -> None:
    folder = write_mvtec(tmp_path, "bottle", {"crack": 6, "scratch": 3})
    result = runner.invoke(app, ["data", "check", str(folder), "--json", "--shots", "3"])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert payload["ok"] is True and payload["format"] == "mvtec" and payload["kind"] == "object"
    rows = {row["name"]: row for row in payload["defects"]}
    assert (rows["crack"]["train"], rows["crack"]["held_out"]) == (3, 3)
    assert (rows["scratch"]["train"], rows["scratch"]["held_out"]) == (3, 0)
    assert payload["splits"]["crack"] == {"train": ["000", "001", "002"], "held_out": ["003", "004", "005"]}
    assert payload["preset"] == "mvtec/bottle"
    # shots == N leaves nothing held out: a warning, not an error.
    assert any("nothing is held out" in p["message"] for p in payload["problems"] if p["defect"] == "scratch")


def test_shots_above_n_is_an_error(tmp_path: Path) -> None:
    folder = write_mvtec(tmp_path, "bottle", {"crack": 6, "scratch": 3})
    result = check(folder, "--shots", "4")
    assert result.exit_code == 2
    assert _has_line(result.stderr, "error:", "--shots 4 is more than the 3 images of defect type 'scratch'")


def test_single_image_defect_holds_nothing_out(tmp_path: Path) -> None:
    folder = write_mvtec(tmp_path, "bottle", {"crack": 1})
    result = check(folder)
    assert result.exit_code == 0
    assert _has_line(result.stderr, "warning:", "'crack'", "only 1 image", "nothing is held out")


# ---------------------------------------------------------------------------------------- broken trees


def _broken_missing_mask(folder: Path) -> tuple[Path, str]:
    (folder / "ground_truth" / "crack" / "001_mask.png").unlink()
    return folder / "test" / "crack" / "001.png", "defect image without a mask"


def _broken_orphan_mask(folder: Path) -> tuple[Path, str]:
    orphan = write_mask(folder / "ground_truth" / "crack" / "007_mask.png")
    return orphan, "mask without an image"


def _broken_size_mismatch(folder: Path) -> tuple[Path, str]:
    mask = write_mask(folder / "ground_truth" / "crack" / "002_mask.png", size=(30, 32))
    return mask, "mask is 30x32 but its image 002.png is 32x32"


def _broken_unreadable(folder: Path) -> tuple[Path, str]:
    bad = folder / "test" / "crack" / "001.png"
    bad.write_bytes(b"this is not a PNG")
    return bad, "not an image file"


def _broken_truncated(folder: Path) -> tuple[Path, str]:
    image = folder / "test" / "crack" / "000.png"
    data = image.read_bytes()
    image.write_bytes(data[: len(data) // 2])
    return image, "truncated image file"


def _broken_truncated_normal(folder: Path) -> tuple[Path, str]:
    image = folder / "train" / "good" / "003.png"
    data = image.read_bytes()
    image.write_bytes(data[: len(data) // 2])
    return image, "truncated image file"


def _broken_empty_defect(folder: Path) -> tuple[Path, str]:
    (folder / "test" / "dent").mkdir()
    return folder / "test" / "dent", "empty defect folder"


def _broken_no_train_good(folder: Path) -> tuple[Path, str]:
    shutil.rmtree(folder / "train")
    return folder / "train" / "good", "missing folder"


def _broken_masks_without_defect(folder: Path) -> tuple[Path, str]:
    write_mask(folder / "ground_truth" / "hole" / "000_mask.png")
    return folder / "ground_truth" / "hole", "masks without images"


def _broken_duplicate_stem(folder: Path) -> tuple[Path, str]:
    write_image(folder / "test" / "crack" / "000.jpg")
    return folder / "test" / "crack" / "000.png", "two files share the stem '000'"


BROKEN = [
    _broken_missing_mask,
    _broken_orphan_mask,
    _broken_size_mismatch,
    _broken_unreadable,
    _broken_truncated,
    _broken_truncated_normal,
    _broken_empty_defect,
    _broken_no_train_good,
    _broken_masks_without_defect,
    _broken_duplicate_stem,
]


@pytest.mark.parametrize("breaker", BROKEN, ids=lambda f: f.__name__.removeprefix("_broken_"))
def test_broken_tree_exits_2_naming_the_file(tmp_path: Path, breaker) -> None:
    folder = write_mvtec(tmp_path / "data set", "bottle", {"crack": 3})
    path, message = breaker(folder)
    result = check(folder)
    assert result.exit_code == 2, result.output
    assert _has_line(result.stderr, "error:", str(path), message), result.stderr
    assert "Traceback" not in result.output


def test_missing_path_and_unknown_category(tmp_path: Path) -> None:
    result = check(tmp_path / "nowhere")
    assert result.exit_code == 2 and _has_line(result.stderr, "error:", str(tmp_path / "nowhere"), "does not exist")
    write_mvtec(tmp_path, "bottle")
    result = check(tmp_path, "--category", "cable")
    assert result.exit_code == 2
    assert _has_line(result.stderr, "error:", "holds no category 'cable'")
    assert _has_line(result.stderr, "hint:", "bottle")
    result = check(tmp_path)
    assert result.exit_code == 2 and _has_line(result.stderr, "hint:", "--category")


def test_folder_layout_broken(tmp_path: Path) -> None:
    folder = write_folder(tmp_path, "widget", {"dent": 2})
    (folder / "masks" / "dent" / "img_1.png").unlink()
    write_mask(folder / "masks" / "dent" / "img_9.png")
    result = check(folder)
    assert result.exit_code == 2
    assert _has_line(result.stderr, "error:", str(folder / "defects" / "dent" / "img_1.png"), "without a mask")
    assert _has_line(result.stderr, "error:", str(folder / "masks" / "dent" / "img_9.png"), "mask without an image")
    (folder / "anogen-data.yaml").write_text("kind: metal\n")
    result = check(folder)
    assert result.exit_code == 2 and _has_line(result.stderr, "error:", "anogen-data.yaml", "kind must be")


def test_visa_broken_split_file(tmp_path: Path) -> None:
    root = write_visa(tmp_path)
    mask = root / "candle" / "Data" / "Masks" / "Anomaly" / "002.png"
    write_mask(mask, size=(32, 32))  # the image is 40x32
    result = check(root, "--category", "candle", "--format", "visa")
    assert result.exit_code == 2
    assert _has_line(result.stderr, "error:", str(mask), "mask is 32x32 but its image 002.JPG is 40x32")


def test_mvtec2_missing_ground_truth(tmp_path: Path) -> None:
    folder = write_mvtec2(tmp_path, "vial")
    shutil.rmtree(folder / "test_public" / "ground_truth")
    result = check(folder)
    assert result.exit_code == 2
    expected = folder / "test_public" / "ground_truth" / "bad"
    assert _has_line(result.stderr, "error:", str(expected), "missing mask folder")


# ---------------------------------------------------------------------------------------- quirky trees


def test_quirky_tree_exits_0_with_warnings(tmp_path: Path) -> None:
    root = tmp_path / "test sets" / "données"
    folder = write_mvtec(root, "bottle", {"crack": 3})
    write_image(folder / "train" / "good" / "000.png", mode="RGBA")
    write_image(folder / "train" / "good" / "001.png", mode="L")
    write_image(folder / "test" / "crack" / "001.png", mode="I;16")
    write_mask(folder / "ground_truth" / "crack" / "002_mask.png", value=1)
    (folder / "test" / "crack" / ".DS_Store").write_bytes(b"\0")
    (folder / "test" / "crack" / "README.txt").write_text("stray")
    result = check(root, "--category", "bottle")
    assert result.exit_code == 0, result.output
    err = result.stderr
    assert _has_line(err, "warning:", str(folder / "train" / "good" / "000.png"), "RGBA")
    assert _has_line(err, "warning:", str(folder / "train" / "good" / "001.png"), "grayscale")
    assert _has_line(err, "warning:", str(folder / "test" / "crack" / "001.png"), "16-bit")
    assert _has_line(err, "warning:", str(folder / "ground_truth" / "crack" / "002_mask.png"), "0/1", "binarised")
    assert _has_line(err, "warning:", str(folder / "test" / "crack" / "README.txt"), "ignored")
    assert ".DS_Store" not in result.output
    assert _has_line(result.stdout, "crack", " 3 ", "1 / 2")
    assert "error:" not in err


def test_quiet_hides_warnings_keeps_errors(tmp_path: Path) -> None:
    folder = write_mvtec(tmp_path, "bottle", {"crack": 3})
    write_image(folder / "train" / "good" / "000.png", mode="L")
    result = runner.invoke(app, ["data", "check", str(folder), "--quiet"])
    assert result.exit_code == 0 and "warning:" not in result.output
    (folder / "ground_truth" / "crack" / "000_mask.png").unlink()
    result = runner.invoke(app, ["data", "check", str(folder), "--quiet"])
    assert result.exit_code == 2 and _has_line(result.stderr, "error:", "000.png", "without a mask")
