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


# One process per umask: os.umask is process-wide, and anogen.io reads it once at import.
_WRITERS_SCRIPT = """
import sys
from pathlib import Path
from anogen.config import ConfigRequest, resolve
from anogen.data import read_category
from anogen.export import ExportConfig, export
from anogen.export.report import write_report
from anogen.fit import fit
from anogen.priors import build_prior
from anogen.synth import remask, synthesize
from tests.test_train import write_toy_category

root = Path(sys.argv[1])
category = read_category(write_toy_category(root / "data", images=3))
build_prior(category, root / "prior", kind="object")
config = resolve(None, None, {
    "backbone": {"id": "tiny"}, "adapter": {"rank": 2, "bcm": True},
    "train": {"resolution": 32, "steps": 2, "checkpoint_every": 1, "validate_every": 1},
})
fit(category, config, root / "runs", prior_dir=root / "prior")
synthesize(root / "runs", root / "synth",
           ConfigRequest(overrides={"sample": {"count": 1, "steps": 2, "max_attempts": 2}}))
remask(root / "synth", overrides={"threshold": 0.5})
export([root / "synth"], ExportConfig(format="mvtec", out=root / "export", data=category.root))
export([root / "synth"], ExportConfig(format="coco", out=root / "coco", data=category.root))
write_report([root / "synth"], root / "report.html")
"""


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_written_files_follow_the_umask(tmp_path: Path, umask: int) -> None:
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[1]
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=str(repo), HF_HUB_OFFLINE="1")
    done = subprocess.run(
        [sys.executable, "-c", _WRITERS_SCRIPT, str(tmp_path)], env=env, umask=umask, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-3000:]
    writers = {"prior": "prior", "runs": "adapter", "synth": "synth", "export": "export", "coco": "export"}
    seen: dict[str, int] = {}
    wrong = []
    for path in sorted(tmp_path.rglob("*")):
        rel = path.relative_to(tmp_path)
        if rel.parts[0] == "data":  # the test's own input tree
            continue
        expected = (0o777 if path.is_dir() else 0o666) & ~umask
        if path.stat().st_mode & 0o777 != expected:
            wrong.append(f"{rel}: {oct(path.stat().st_mode & 0o777)}")
        if path.is_file():
            seen[writers.get(rel.parts[0], rel.parts[0])] = seen.get(writers.get(rel.parts[0], rel.parts[0]), 0) + 1
    assert not wrong, f"modes other than umask {oct(umask)} gives: {wrong[:10]}"
    # every writer really wrote files: adapter + adapter.json + checkpoints + log, images + masks, the report
    assert {"adapter", "synth", "export", "prior", "report.html", "report.png"} <= set(seen), seen
    runs = tmp_path / "runs" / "widget" / "stain"
    assert (runs / "adapter.safetensors").is_file() and (runs / "adapter.json").is_file()
    assert any((runs / "checkpoints").iterdir()) and (runs / "train_log.jsonl").is_file()
    assert list((tmp_path / "synth").rglob("mask/*.png")) and list((tmp_path / "export").rglob("*.png"))
