"""Toy data: determinism, layout, and the colour rule that finds each defect again."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy.ndimage import label
from typer.testing import CliRunner

from anogen.io import load_mask
from anogen.toy import DEFECTS, defect_pixels, make_category, marked_image, normal_image, part_canvas
from anogen.toy.data import GREY


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _rgb(path: Path) -> np.ndarray:
    with Image.open(path) as img:
        assert img.mode == "RGB"
        return np.asarray(img)


@pytest.fixture(scope="module")
def categories(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("toy")
    small = dict(n_train=6, n_test_good=3, n_per_defect=8)
    return {
        "object": make_category(root, "object", seed=0, **small),
        "texture": make_category(root, "texture", seed=0, **small),
        "textured": make_category(root, "object", seed=0, background="textured", name="object_textured", **small),
    }


def test_same_seed_same_bytes_and_other_seed_differs(tmp_path: Path) -> None:
    small = dict(n_train=3, n_test_good=2, n_per_defect=2)
    for kind in ("object", "texture"):
        a = _files(make_category(tmp_path / "a", kind, seed=5, **small))
        b = _files(make_category(tmp_path / "b", kind, seed=5, **small))
        c = _files(make_category(tmp_path / "c", kind, seed=6, **small))
        assert a == b
        assert a.keys() == c.keys()
        differing = [k for k in a if k.endswith(".png") and a[k] != c[k]]
        # Every image (not only some) changes with the seed.
        assert len(differing) >= len([k for k in a if k.endswith(".png")]) * 0.9


def test_layout_is_mvtec_with_fixed_width_stems_and_one_mask_per_image(categories: dict[str, Path]) -> None:
    for name, folder in categories.items():
        assert sorted(p.name for p in (folder / "test").iterdir()) == sorted(["good", *DEFECTS])
        assert len(list((folder / "train" / "good").glob("*.png"))) == 6
        for defect in DEFECTS:
            stems = sorted(p.stem for p in (folder / "test" / defect).glob("*.png"))
            masks = sorted(p.name for p in (folder / "ground_truth" / defect).glob("*.png"))
            assert stems == [f"{i:03d}" for i in range(8)]
            assert masks == [f"{s}_mask.png" for s in stems]
        marker = json.loads((folder / "toy.json").read_text())
        assert marker["toy"] is True and marker["seed"] == 0 and marker["size"] == 64
        assert marker["kind"] == ("texture" if name == "texture" else "object")


def test_every_ground_truth_mask_equals_its_colour_rule(categories: dict[str, Path]) -> None:
    for folder in categories.values():
        for defect in DEFECTS:
            for image_path in sorted((folder / "test" / defect).glob("*.png")):
                image = _rgb(image_path)
                with Image.open(folder / "ground_truth" / defect / f"{image_path.stem}_mask.png") as m:
                    raw = np.asarray(m)
                assert raw.ndim == 2 and set(np.unique(raw)) <= {0, 255}
                mask = raw > 0
                assert mask.sum() >= 6, f"{image_path}: defect too small to see"
                np.testing.assert_array_equal(defect_pixels(image, defect), mask, err_msg=str(image_path))
                # The other defect types' rules find nothing: the three looks are distinct.
                for other in DEFECTS:
                    if other != defect:
                        assert not defect_pixels(image, other).any(), f"{image_path}: {other} rule fires"


def test_no_rule_fires_on_normals_marks_or_part_canvases(categories: dict[str, Path]) -> None:
    images = [_rgb(p) for folder in categories.values() for p in sorted((folder / "train" / "good").glob("*.png"))]
    images += [_rgb(p) for folder in categories.values() for p in sorted((folder / "test" / "good").glob("*.png"))]
    # The pretraining's generic marks must not belong to a defect family (no leak of the defect types).
    images += [part_canvas(0, i)[0] for i in range(40)]
    images += [marked_image(kind, 0, i)[0] for kind in ("object", "texture") for i in range(20)]
    for image in images:
        for defect in DEFECTS:
            assert not defect_pixels(image, defect).any()


def test_defects_lie_on_the_object_and_object_masks_are_the_silhouette(categories: dict[str, Path]) -> None:
    for name in ("object", "textured"):
        folder = categories[name]
        for defect in DEFECTS:
            for image_path in sorted((folder / "test" / defect).glob("*.png")):
                obj = load_mask(folder / "object_masks" / f"test/{defect}" / f"{image_path.stem}.png")
                mask = load_mask(folder / "ground_truth" / defect / f"{image_path.stem}_mask.png")
                assert not (mask & ~obj).any()
        for image_path in sorted((folder / "train" / "good").glob("*.png")):
            obj = load_mask(folder / "object_masks" / "train" / "good" / f"{image_path.stem}.png")
            _, count = label(obj)
            assert count == 1
            # An ellipse with radii in [16.5, 21] px: area within pi * r^2 bounds (pixel rounding aside).
            assert np.pi * 16.0**2 <= obj.sum() <= np.pi * 21.5**2
            image = _rgb(image_path).astype(float)
            # The object is bluer than its (beige) background: the mask separates two colour populations.
            blue_minus_red = image[..., 2] - image[..., 0]
            assert blue_minus_red[obj].mean() > blue_minus_red[~obj].mean() + 20
    assert not (categories["texture"] / "object_masks").exists()


def test_part_canvas_is_exact_grey_outside_its_marks() -> None:
    for i in range(10):
        image, marks = part_canvas(3, i)
        assert marks.any()
        assert (image[~marks] == GREY).all()
        assert (np.abs(image[marks].astype(int) - GREY).max(axis=-1) > 0).mean() > 0.9


def test_size_option_scales_the_geometry(tmp_path: Path) -> None:
    folder = make_category(tmp_path, "object", seed=1, size=128, n_train=2, n_test_good=1, n_per_defect=2)
    image = _rgb(folder / "test" / "scratch" / "000.png")
    assert image.shape == (128, 128, 3)
    mask = load_mask(folder / "ground_truth" / "scratch" / "000_mask.png")
    np.testing.assert_array_equal(defect_pixels(image, "scratch"), mask)
    small, _ = normal_image("object", 1, 0, size=64)
    assert small.shape == (64, 64, 3)


def test_cli_toy_make_writes_both_kinds(tmp_path: Path) -> None:
    from anogen.cli.app import app

    runner = CliRunner()
    result = runner.invoke(app, ["toy", "make", str(tmp_path), "--n-train", "2", "--n-per-defect", "1", "--json"])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert [c["kind"] for c in payload["categories"]] == ["object", "texture"]
    assert (tmp_path / "object" / "ground_truth" / "hole" / "000_mask.png").is_file()
    assert (tmp_path / "texture" / "toy.json").is_file()
    bad = runner.invoke(app, ["toy", "make", str(tmp_path), "--kind", "sphere"])
    assert bad.exit_code == 2
