from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from anogen.io import atomic_open, load_mask, load_rgb, mask_to_png_array, natural_key, safe_name, save_png_atomic
from anogen.seeding import derive_seed


def test_atomic_open_keeps_old_file_when_the_write_fails(tmp_path: Path) -> None:
    target = tmp_path / "out.json"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_open(target, "w", encoding="utf-8") as handle:
        handle.write("half of the new")
        raise RuntimeError("killed mid-write")
    assert target.read_text() == "old"
    assert os.listdir(tmp_path) == ["out.json"]  # no temp file left behind


def test_atomic_open_replaces_on_success(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "out.txt"
    with atomic_open(target, "w", encoding="utf-8") as handle:
        handle.write("new")
    assert target.read_text() == "new"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("../x", "x"), ("a/b", "a_b"), ("..", "unnamed"), ("Kratzer ä", "Kratzer_a"), ("ok_name-1.2", "ok_name-1.2")],
)
def test_safe_name_never_escapes(raw: str, expected: str) -> None:
    cleaned = safe_name(raw)
    assert cleaned == expected
    assert "/" not in cleaned and not cleaned.startswith(".")


def test_natural_key_orders_numbers_numerically() -> None:
    assert sorted(["10.png", "2.png", "1.png"], key=natural_key) == ["1.png", "2.png", "10.png"]


def test_png_writes_are_byte_deterministic(tmp_path: Path) -> None:
    arr = np.random.default_rng(0).integers(0, 255, (16, 16, 3), dtype=np.uint8)
    save_png_atomic(tmp_path / "a.png", arr)
    save_png_atomic(tmp_path / "b.png", arr)
    assert (tmp_path / "a.png").read_bytes() == (tmp_path / "b.png").read_bytes()


def test_image_modes_convert_to_rgb_and_masks_binarise(tmp_path: Path) -> None:
    sixteen = (np.arange(64, dtype=np.uint16).reshape(8, 8) * 1000).astype(np.uint16)
    Image.fromarray(sixteen).save(tmp_path / "g16.png")
    rgb = np.asarray(load_rgb(tmp_path / "g16.png"))
    assert rgb.shape == (8, 8, 3) and rgb.dtype == np.uint8
    assert rgb[..., 0].max() > 200  # 16-bit range was rescaled, not clipped to its low byte
    Image.fromarray(np.array([[0, 1], [2, 0]], dtype=np.uint8)).save(tmp_path / "m.png")
    assert load_mask(tmp_path / "m.png").tolist() == [[False, True], [True, False]]
    assert set(np.unique(mask_to_png_array(np.array([[0, 3]])))) == {0, 255}


def test_derive_seed_depends_on_every_part() -> None:
    base = derive_seed(0, "bottle", "crack", 1)
    assert base == derive_seed(0, "bottle", "crack", 1)
    others = {
        derive_seed(1, "bottle", "crack", 1),
        derive_seed(0, "cable", "crack", 1),
        derive_seed(0, "bottle", "x", 1),
    }
    assert base not in others and derive_seed(0, "bottle", "crack", 2) != base
    assert 0 <= base < 2**63
