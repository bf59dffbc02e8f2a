"""`anogen prior` and the priors' consumer helpers, on the toy world and on hand-built trees of known geometry."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from anogen.cli.app import app
from anogen.data import read_category
from anogen.io import load_mask, load_rgb
from anogen.priors import (
    PriorParams,
    background_paths,
    build_prior,
    estimate_object_mask,
    fraction_on_object,
    load_prior,
    object_mask_for,
    plausible_location,
    read_category_checked,
    resolve_kind,
)
from anogen.toy.data import make_category

SMALL = {"n_train": 12, "n_test_good": 4, "n_per_defect": 4}


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


@pytest.fixture(scope="module")
def toy_plain(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_category(tmp_path_factory.mktemp("toy_plain"), "object", seed=0, size=64, background="plain", **SMALL)


@pytest.fixture(scope="module")
def toy_textured(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_category(
        tmp_path_factory.mktemp("toy_textured"), "object", seed=1, size=64, background="textured", **SMALL
    )


@pytest.fixture(scope="module")
def toy_texture(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_category(tmp_path_factory.mktemp("toy_texture"), "texture", seed=0, size=64, **SMALL)


@pytest.fixture(scope="module")
def built_plain(toy_plain: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("prior_plain")
    build_prior(read_category_checked(toy_plain), out)
    return out


def _written_ious(category_dir: Path, prior_folder: Path) -> list[float]:
    """IoU of every written object mask against the toy generator's ground-truth silhouette."""
    ious = []
    for gt_path in sorted((category_dir / "object_masks").rglob("*.png")):
        rel = gt_path.relative_to(category_dir / "object_masks")
        ours = prior_folder / "object" / rel
        assert ours.is_file(), f"no object mask written for {rel}"
        ious.append(_iou(load_mask(ours), load_mask(gt_path)))
    return ious


# ------------------------------------------------------------------------------------------ object masks


def test_object_masks_reach_iou_on_toy_plain(toy_plain: Path, built_plain: Path) -> None:
    ious = _written_ious(toy_plain, built_plain / "object")
    assert len(ious) == 12 + 4 + 3 * 4
    assert np.median(ious) >= 0.9
    assert min(ious) >= 0.8


def test_object_masks_reach_iou_on_toy_textured_background(toy_textured: Path, tmp_path: Path) -> None:
    build_prior(read_category_checked(toy_textured), tmp_path)
    ious = _written_ious(toy_textured, tmp_path / "object")
    assert np.median(ious) >= 0.9


def test_object_masks_survive_blur_and_extra_noise(toy_textured: Path) -> None:
    """Camera-like degradation on top of the textured background: Gaussian blur 1 px and noise sigma 8."""
    from scipy import ndimage

    rng = np.random.default_rng(0)
    ious = []
    for path in sorted((toy_textured / "train" / "good").glob("*.png")):
        image = np.asarray(load_rgb(path)).astype(np.float64)
        image = ndimage.gaussian_filter(image, (1.0, 1.0, 0)) + rng.normal(0, 8.0, image.shape)
        image = np.clip(image, 0, 255).astype(np.uint8)
        gt = load_mask(toy_textured / "object_masks" / "train" / "good" / path.name)
        ious.append(_iou(estimate_object_mask(image), gt))
    assert np.median(ious) >= 0.9


def test_object_mask_of_large_image_is_computed_at_work_size_and_upsampled() -> None:
    """A 512 px disc on a flat background: the mask is returned at full size and matches the disc."""
    size = 512
    yy, xx = np.mgrid[0:size, 0:size] + 0.5
    disc = (yy - 250) ** 2 + (xx - 270) ** 2 <= 150**2
    image = np.where(disc[..., None], np.array([40, 90, 160]), np.array([200, 200, 190])).astype(np.uint8)
    mask = estimate_object_mask(image, PriorParams(work_size=128))
    assert mask.shape == (size, size)
    assert _iou(mask, disc) >= 0.98


def test_object_touching_the_border_is_not_taken_for_background() -> None:
    """An object crossing one edge covers part of the border; the small border cluster it forms is dropped."""
    size = 64
    image = np.full((size, size, 3), (190, 185, 175), dtype=np.uint8)
    obj = np.zeros((size, size), dtype=bool)
    obj[10:50, 40:] = True  # touches the right edge over 40 of 256 border pixels
    image[obj] = (60, 80, 120)
    assert _iou(estimate_object_mask(image), obj) >= 0.95


def test_written_files_have_the_promised_format(toy_plain: Path, built_plain: Path) -> None:
    folder = built_plain / "object"
    obj_path = folder / "object" / "train" / "good" / "000.png"
    with Image.open(obj_path) as img:
        assert img.mode == "L"
        arr = np.asarray(img)
        assert img.size == Image.open(toy_plain / "train" / "good" / "000.png").size
    assert set(np.unique(arr)) <= {0, 255}
    # I_b: the source image outside the object, black on it.
    source = np.asarray(load_rgb(toy_plain / "train" / "good" / "000.png"))
    background = np.asarray(Image.open(folder / "background" / "train" / "good" / "000.png"))
    obj = arr > 0
    assert np.array_equal(background[~obj], source[~obj])
    assert not background[obj].any()
    # Backgrounds exist for normals only; defect images get object masks (for the location maps).
    assert (folder / "background" / "test" / "good" / "000.png").is_file()
    assert not (folder / "background" / "test" / "stain").exists()
    assert (folder / "object" / "test" / "stain" / "000.png").is_file()
    record = json.loads((folder / "prior.json").read_text())
    assert record["schema_version"] == 1
    assert record["kind"] == "object" and record["kind_source"] == "dataset"
    assert record["method"] == "border-colour-model"
    assert record["params"]["threshold"] == PriorParams().threshold
    assert record["source"]["format"] == "toy"
    assert Path(record["source"]["root"]) == toy_plain.resolve()
    for name in ("shapes.json", "location.npy", "location.png", "preview.png"):
        assert (folder / name).is_file(), name
    for defect in ("stain", "scratch", "hole"):
        heat = np.load(folder / "location" / f"{defect}.npy")
        assert heat.shape == (64, 64) and heat.dtype == np.float32
        assert (folder / "location" / f"{defect}.png").is_file()


# ------------------------------------------------------------------------- location map and shape statistics


def _write_png(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def _square_tree(root: Path, n_normals: int = 3) -> tuple[Path, np.ndarray, np.ndarray]:
    """An MVTec tree: a 32x32 square object at (16..48, 8..40) on grey; one defect type whose masks all cover
    the top-left quarter of the object (rows 16..32, cols 8..24)."""
    cat = root / "widget"
    obj = np.zeros((64, 64), dtype=bool)
    obj[16:48, 8:40] = True
    image = np.full((64, 64, 3), 200, dtype=np.uint8)
    image[obj] = (50, 70, 140)
    defect = np.zeros((64, 64), dtype=bool)
    defect[16:32, 8:24] = True
    for i in range(n_normals):
        _write_png(cat / "train" / "good" / f"{i:03d}.png", image)
    _write_png(cat / "test" / "good" / "000.png", image)
    for i in range(2):
        damaged = image.copy()
        damaged[defect] = (230, 40, 40)
        _write_png(cat / "test" / "dent" / f"{i:03d}.png", damaged)
        _write_png(cat / "ground_truth" / "dent" / f"{i:03d}_mask.png", np.where(defect, 255, 0).astype(np.uint8))
    return cat, obj, defect


def test_location_map_is_in_the_object_frame(tmp_path: Path) -> None:
    cat, obj, defect = _square_tree(tmp_path / "data")
    build_prior(read_category_checked(cat, dataset_format="mvtec"), tmp_path / "prior", stats_from="all")
    folder = tmp_path / "prior" / "widget"
    heat = np.load(folder / "location" / "dent.npy")
    # The defect covers exactly the top-left quarter of the object's box, in every sample.
    expected = np.zeros((64, 64))
    expected[:32, :32] = 1.0
    assert np.allclose(heat, expected, atol=1e-6)
    assert np.allclose(np.load(folder / "location.npy"), expected, atol=1e-6)
    shapes = json.loads((folder / "shapes.json").read_text())["defects"]["dent"]
    assert shapes["with_mask"] == 2
    assert shapes["area_fraction"]["median"] == pytest.approx(defect.mean(), abs=1e-6)
    # Opening with a disk rounds the square's corners (3 pixels each), hence the tolerance.
    assert shapes["area_of_object"]["median"] == pytest.approx(defect.sum() / obj.sum(), rel=0.02)
    assert shapes["bbox_aspect"]["median"] == pytest.approx(1.0)
    assert shapes["components"]["max"] == 1.0
    assert shapes["fraction_on_object"]["min"] == pytest.approx(1.0, abs=0.02)
    assert shapes["center_x"]["median"] == pytest.approx(0.25)
    assert shapes["center_y"]["median"] == pytest.approx(0.25)
    assert json.loads((folder / "prior.json").read_text())["defects"]["dent"]["stems"] == ["000", "001"]
    # The normals' object masks are the square itself, up to the rounded corners.
    assert _iou(load_mask(folder / "object" / "train" / "good" / "000.png"), obj) >= 0.98


def test_statistics_use_only_the_few_shot_training_masks_by_default(toy_plain: Path, built_plain: Path) -> None:
    """Held-out masks must not shape generation: by default only the first floor(N/3) masks are counted."""
    record = json.loads((built_plain / "object" / "prior.json").read_text())
    shapes = json.loads((built_plain / "object" / "shapes.json").read_text())["defects"]
    for defect in ("stain", "scratch", "hole"):
        assert record["defects"][defect]["stems"] == ["000"]  # 4 images -> 1 shot
        assert record["defects"][defect]["stats_from"] == "train"
        area = load_mask(toy_plain / "ground_truth" / defect / "000_mask.png").mean()
        assert shapes[defect]["area_fraction"]["median"] == pytest.approx(area, abs=1e-6)


# ------------------------------------------------------------------------------------------------ textures


def test_texture_category_is_marked_and_gets_no_object_masks(toy_texture: Path, tmp_path: Path) -> None:
    result = build_prior(read_category_checked(toy_texture), tmp_path)
    folder = tmp_path / "texture"
    record = json.loads((folder / "prior.json").read_text())
    assert record["kind"] == "texture" and result.kind == "texture"
    assert not (folder / "object").exists() and not (folder / "background").exists()
    assert all(row["object"] is None and row["background"] is None for row in record["images"])
    assert (folder / "shapes.json").is_file() and (folder / "location" / "stain.npy").is_file()
    assert object_mask_for(tmp_path, "texture", "train/good", "000") is None
    assert background_paths(tmp_path, "texture") == []


def test_object_priors_requested_on_a_texture_warn_and_write_none(toy_texture: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    res = runner.invoke(app, ["prior", str(toy_texture), "--out", str(tmp_path), "--kind", "object"])
    assert res.exit_code == 0, res.output
    assert "warning" in res.output and "texture" in res.output
    assert not (tmp_path / "texture" / "object").exists()
    assert json.loads((tmp_path / "texture" / "prior.json").read_text())["kind"] == "texture"


def test_preset_with_bcm_on_a_texture_warns(toy_texture: Path, tmp_path: Path) -> None:
    res = CliRunner().invoke(app, ["prior", str(toy_texture), "--out", str(tmp_path), "--preset", "generic/object"])
    assert res.exit_code == 0, res.output
    assert "warning" in res.output and "BCM" in res.output and "--bcm off" in res.output
    assert not (tmp_path / "texture" / "object").exists()


def test_unknown_kind_is_guessed_from_the_images(toy_plain: Path, toy_texture: Path) -> None:
    for folder, expected in ((toy_plain, "object"), (toy_texture, "texture")):
        cat = read_category(folder)
        cat.kind = None
        kind, source, warnings = resolve_kind(cat)
        assert (kind, source) == (expected, "guessed")
        assert warnings and "guessed" in warnings[0]
        assert resolve_kind(cat, preset_bcm=True)[:2] == ("object", "preset")
        assert resolve_kind(cat, "texture")[:2] == ("texture", "flag")


# ---------------------------------------------------------------------------------------- cache and determinism


def _snapshot(folder: Path) -> dict[str, tuple[int, bytes]]:
    return {
        p.relative_to(folder).as_posix(): (p.stat().st_mtime_ns, p.read_bytes())
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def test_rerun_is_a_no_op_and_a_changed_image_is_redone_alone(toy_plain: Path, tmp_path: Path) -> None:
    import shutil

    data = tmp_path / "data" / "object"
    shutil.copytree(toy_plain, data)
    out = tmp_path / "prior"
    first = build_prior(read_category_checked(data), out)
    assert not first.up_to_date and first.written
    before = _snapshot(out / "object")
    second = build_prior(read_category_checked(data), out)
    assert second.up_to_date and second.written == []
    assert _snapshot(out / "object") == before  # not even rewritten with the same bytes

    # Replace one normal image with another one: only its two files (and the summaries) are written again.
    shutil.copy(data / "train" / "good" / "001.png", data / "train" / "good" / "000.png")
    third = build_prior(read_category_checked(data), out)
    written = {p.relative_to(out / "object").as_posix() for p in third.written}
    assert {"object/train/good/000.png", "background/train/good/000.png"} <= written
    assert not any(w.startswith(("object/", "background/")) and "/000.png" not in w for w in written)
    assert (
        load_mask(out / "object" / "object" / "train" / "good" / "000.png").tolist()
        == load_mask(out / "object" / "object" / "train" / "good" / "001.png").tolist()
    )

    # New parameters invalidate the cache.
    fourth = build_prior(read_category_checked(data), out, params=PriorParams(threshold=5.0))
    assert not fourth.up_to_date and len(fourth.written) > 2 * 16


def test_an_interrupted_run_resumes_where_it_stopped(toy_plain: Path, built_plain: Path, tmp_path: Path) -> None:
    from anogen.progress import ProgressEvent

    class Stop(Exception):
        pass

    def stop_after_ten(event: ProgressEvent) -> None:
        if event.task.startswith("prior") and event.completed == 10:
            raise Stop

    cat = read_category_checked(toy_plain)
    with pytest.raises(Stop):
        build_prior(cat, tmp_path, progress=stop_after_ten)
    assert not (tmp_path / "object" / "prior.json").exists()
    resumed = build_prior(cat, tmp_path)
    reused = {p.relative_to(tmp_path / "object").as_posix() for p in resumed.reused}
    assert "object/train/good/000.png" in reused and "background/train/good/009.png" in reused
    assert "object/train/good/010.png" not in reused
    assert not (tmp_path / "object" / ".prior-progress.jsonl").exists()
    # The resumed result equals an uninterrupted one.
    ours = {k: v[1] for k, v in _snapshot(tmp_path / "object").items()}
    assert ours == {k: v[1] for k, v in _snapshot(built_plain / "object").items()}


def test_same_inputs_give_identical_bytes(toy_plain: Path, built_plain: Path, tmp_path: Path) -> None:
    build_prior(read_category_checked(toy_plain), tmp_path)
    ours = {k: v[1] for k, v in _snapshot(tmp_path / "object").items()}
    theirs = {k: v[1] for k, v in _snapshot(built_plain / "object").items()}
    assert ours.keys() == theirs.keys()
    assert ours == theirs


def test_removed_images_lose_their_outputs(tmp_path: Path) -> None:
    cat, _, _ = _square_tree(tmp_path / "data", n_normals=3)
    out = tmp_path / "prior"
    build_prior(read_category_checked(cat, dataset_format="mvtec"), out)
    stale = out / "widget" / "background" / "train" / "good" / "002.png"
    assert stale.is_file()
    (cat / "train" / "good" / "002.png").unlink()
    build_prior(read_category_checked(cat, dataset_format="mvtec"), out)
    assert not stale.exists()
    assert len(background_paths(out, "widget", roles=("train",))) == 2


# ------------------------------------------------------------------------------------------------- consumers


def test_consumer_helpers_read_back_what_was_written(toy_plain: Path, built_plain: Path) -> None:
    record = load_prior(built_plain, "object")
    assert record.is_object and record.category == "object"
    mask = object_mask_for(built_plain, "object", "train/good", "003")
    assert mask is not None and mask.dtype == bool and mask.shape == (64, 64)
    assert np.array_equal(mask, load_mask(built_plain / "object" / "object" / "train" / "good" / "003.png"))
    assert object_mask_for(built_plain, "object", "train/good", "no-such-stem") is None
    paths = background_paths(built_plain, "object")
    assert [p.name for p in paths] == [f"{i:03d}.png" for i in range(12)]  # train normals only, sorted
    assert all(p.is_file() and p.parent.as_posix().endswith("background/train/good") for p in paths)
    assert len(background_paths(built_plain, "object", roles=("train", "test"))) == 16
    row = record.find_source(toy_plain / "test" / "good" / "002.png")
    assert row is not None and row.split == "test/good" and row.stem == "002"
    # The category folder itself is accepted as prior_dir.
    assert load_prior(built_plain / "object", "object").folder == record.folder


def test_load_prior_of_missing_category_is_an_input_error(tmp_path: Path) -> None:
    from anogen.errors import InputError

    with pytest.raises(InputError, match="no prior for category"):
        load_prior(tmp_path, "bottle")


def test_fraction_on_object_known_geometry() -> None:
    obj = np.zeros((8, 8), dtype=bool)
    obj[:, :4] = True
    mask = np.zeros((8, 8), dtype=bool)
    mask[2:4, 2:6] = True  # 4 of its 8 pixels lie on the object
    assert fraction_on_object(mask, obj) == pytest.approx(0.5)
    assert plausible_location(mask, obj, min_fraction=0.5)
    assert not plausible_location(mask, obj, min_fraction=0.6)
    # A 4x4 mask against the 8x8 object mask: resized nearest-neighbour first.
    small = np.zeros((4, 4), dtype=bool)
    small[:, 3] = True
    assert fraction_on_object(small, obj) == 0.0
    assert fraction_on_object(np.zeros((8, 8), bool), obj) == 0.0
    assert not plausible_location(np.zeros((8, 8), bool), None)  # an empty mask is never plausible
    assert plausible_location(mask, None)  # no object prior (texture): accept


def test_plausible_location_accepts_real_defects_and_rejects_shifted_ones(toy_plain: Path, built_plain: Path) -> None:
    """The real ground-truth masks lie on the object; the same masks moved into a background corner do not."""
    record = load_prior(built_plain, "object")
    accepted_real, rejected_shifted, total = 0, 0, 0
    for row in record.images:
        if row.role != "defect":
            continue
        gt = load_mask(toy_plain / "ground_truth" / row.defect / f"{row.stem}_mask.png")
        obj = load_mask(record.folder / row.object)
        total += 1
        accepted_real += plausible_location(gt, obj)
        # Move the mask's box into the image corner farthest from the object's centre.
        ys, xs = np.nonzero(gt)
        crop = gt[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]
        shifted = np.zeros_like(gt)
        cy, cx = np.argwhere(obj).mean(axis=0)
        top = 0 if cy >= gt.shape[0] / 2 else gt.shape[0] - crop.shape[0]
        left = 0 if cx >= gt.shape[1] / 2 else gt.shape[1] - crop.shape[1]
        shifted[top : top + crop.shape[0], left : left + crop.shape[1]] = crop
        rejected_shifted += not plausible_location(shifted, obj)
    assert total == 12
    assert accepted_real == total
    assert rejected_shifted >= 0.9 * total


# --------------------------------------------------------------------------------------------------- the CLI


def test_cli_writes_and_reports_json(toy_plain: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    res = runner.invoke(app, ["prior", str(toy_plain), "--out", str(tmp_path), "--json", "--quiet"])
    assert res.exit_code == 0, res.output
    payload = json.loads(res.stdout)
    assert payload["kind"] == "object" and payload["up_to_date"] is False
    assert 0.1 < payload["median_object_fraction"] < 0.5
    res = runner.invoke(app, ["prior", str(toy_plain), "--out", str(tmp_path), "--json", "--quiet"])
    assert json.loads(res.stdout)["up_to_date"] is True


def test_cli_shots_and_stats_from_choose_the_masks(tmp_path: Path) -> None:
    cat, _, _ = _square_tree(tmp_path / "data")
    runner = CliRunner()
    res = runner.invoke(app, ["prior", str(cat), "--out", str(tmp_path / "a"), "--shots", "2", "--quiet"])
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "a" / "widget" / "prior.json").read_text())["defects"]["dent"]["stems"] == [
        "000",
        "001",
    ]
    res = runner.invoke(app, ["prior", str(cat), "--out", str(tmp_path / "b"), "--shots", "3"])
    assert res.exit_code == 2 and "--shots" in res.output  # more shots than images: the split's own error
    res = runner.invoke(app, ["prior", str(cat), "--out", str(tmp_path / "b"), "--stats-from", "test"])
    assert res.exit_code == 2 and "--stats-from" in res.output


def test_cli_dry_run_lists_files_and_writes_nothing(toy_plain: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    out = tmp_path / "prior"
    res = runner.invoke(app, ["prior", str(toy_plain), "--out", str(out), "--dry-run"])
    assert res.exit_code == 0, res.output
    assert "would write" in res.output
    assert str(out / "object" / "object" / "train" / "good" / "000.png") in res.output
    assert str(out / "object" / "prior.json") in res.output
    assert not out.exists()


def test_cli_category_without_normal_images_exits_2(tmp_path: Path) -> None:
    cat, _, _ = _square_tree(tmp_path / "data", n_normals=0)
    (cat / "test" / "good" / "000.png").unlink()
    res = CliRunner().invoke(app, ["prior", str(cat), "--out", str(tmp_path / "prior")])
    assert res.exit_code == 2
    errors = [line for line in res.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "normal" in errors[0]
    assert "Traceback" not in res.output


def test_cli_unreadable_image_exits_2_naming_the_file(tmp_path: Path) -> None:
    cat, _, _ = _square_tree(tmp_path / "data")
    bad = cat / "train" / "good" / "001.png"
    bad.write_bytes(b"not a png at all")
    res = CliRunner().invoke(app, ["prior", str(cat), "--out", str(tmp_path / "prior")])
    assert res.exit_code == 2
    assert "001.png" in res.output and "Traceback" not in res.output


def test_library_refuses_a_category_without_normals() -> None:
    from anogen.data.model import Category
    from anogen.errors import DataError

    with pytest.raises(DataError, match="no normal images"):
        build_prior(Category(name="empty", root=Path("."), dataset_format="mvtec"), Path("unused"))


def test_cli_bad_options_exit_2(toy_plain: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    res = runner.invoke(app, ["prior", str(toy_plain), "--out", str(tmp_path), "--kind", "shiny"])
    assert res.exit_code == 2 and "--kind" in res.output
    res = runner.invoke(app, ["prior", str(toy_plain), "--out", str(tmp_path), "--threshold", "-1"])
    assert res.exit_code == 2 and "--threshold" in res.output
    res = runner.invoke(app, ["prior", str(tmp_path / "missing"), "--out", str(tmp_path)])
    assert res.exit_code == 2


def test_cli_help_has_examples() -> None:
    res = CliRunner().invoke(app, ["prior", "--help"])
    assert res.exit_code == 0 and "anogen prior" in res.output and "--dry-run" in res.output


def test_kind_flag_overrides_the_data_set(tmp_path: Path) -> None:
    """An MVTec category of an unknown name is an object by default; `--kind texture` marks it texture."""
    cat, _, _ = _square_tree(tmp_path / "data")
    res = CliRunner().invoke(app, ["prior", str(cat), "--out", str(tmp_path / "p"), "--kind", "texture", "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["kind_source"] == "flag"
    assert not (tmp_path / "p" / "widget" / "object").exists()
