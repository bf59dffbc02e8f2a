"""Exported trees stay byte-identical to those of the writer before the fast one (issue 16).

``golden_trees.json`` holds the sha256 of every file of exports made by the per-file-fsync writer (commit
d745627, before the fast writer) of a fixed world, in every format and link mode. Sources are PNGs stored without
compression (``compress_level=0``) and the exports need no conversion (``--size native``), so the bytes depend
on neither zlib's build nor Pillow's encoder. The world lives at one fixed path (the export's digest hashes
absolute paths); that path and the anogen version are replaced by placeholders in the files. Converted exports
are compared by pixels (PNG encoders may change between builds).

Regenerate only for an intended format change: ``python tests/export/test_golden.py --write``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
from helpers import make_mvtec, make_synth
from PIL import Image

from anogen import __version__
from anogen.export import ExportConfig, export

GOLDEN = Path(__file__).with_name("golden_trees.json")
SPLIT = {"train": ["000", "001"], "held_out": ["002", "003", "004", "005"]}
VARIANTS: dict[str, dict] = {
    "mvtec": {"format": "mvtec", "size": "native", "include_real_test": True},
    "mvtec-hardlink": {"format": "mvtec", "size": "native", "link": "hardlink"},
    "mvtec-symlink": {"format": "mvtec", "size": "native", "link": "symlink"},
    "coco": {"format": "coco", "size": "native", "include_real_test": True},
    "coco-per-mask": {"format": "coco", "size": "native", "coco_per_mask": True},
    "folder": {"format": "folder", "size": "native", "include_real_test": True},
    "visa": {"format": "visa", "size": "native"},
    # 32 px synthetic images resized to the 40 px category: every anomalous file is converted.
    "mvtec-converted": {"format": "mvtec", "include_real_test": True},
}


def _world(root: Path) -> dict[str, Path]:
    data = make_mvtec(root / "data", defects={"crack": 6})
    synth = root / "synth"
    make_synth(synth, defect="crack", split=SPLIT)
    make_synth(synth, defect="scratch", attempts=4, rejected=(0, 3), seed=9)
    for path in sorted(root.rglob("*.png")):
        with Image.open(path) as img:
            img.load()
            img.save(path, format="PNG", compress_level=0)
    return {"data": data, "synth": synth}


def _digest(path: Path, root: Path, converted: bool) -> str:
    if converted and path.suffix == ".png":
        with Image.open(path) as img:
            return hashlib.sha256(f"{img.mode}{img.size}".encode() + np.asarray(img).tobytes()).hexdigest()
    data = path.read_bytes().replace(str(root).encode(), b"<TMP>")
    return hashlib.sha256(data.replace(f'"{__version__}"'.encode(), b'"<VERSION>"')).hexdigest()


def export_trees(root: Path) -> dict[str, dict[str, str]]:
    """Export the fixed world in every variant; ``{variant: {relative path: sha256}}``."""
    root = root.resolve()
    world = _world(root)
    trees = {}
    for name, options in VARIANTS.items():
        out = root / "out" / name
        data = None if options["format"] == "coco" else world["data"]
        export([world["synth"]], ExportConfig(out=out, data=data, **options))
        converted = name.endswith("converted")
        trees[name] = {
            p.relative_to(out).as_posix(): _digest(p, root, converted)
            for p in sorted(out.rglob("*"))
            if p.is_file() and not (converted and p.suffix != ".png")
        }
    return trees


def _fixed_root() -> Path:
    root = Path(tempfile.gettempdir()) / f"anogen-golden-{os.getuid()}"
    shutil.rmtree(root, ignore_errors=True)
    return root


def test_trees_are_byte_identical_to_the_previous_writer() -> None:
    want = json.loads(GOLDEN.read_text())
    root = _fixed_root()
    try:
        got = export_trees(root)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    assert sorted(got) == sorted(want)
    for name in want:
        assert sorted(got[name]) == sorted(want[name]), name
        changed = [rel for rel in want[name] if got[name][rel] != want[name][rel]]
        assert changed == [], (name, changed)


if __name__ == "__main__" and sys.argv[1:] == ["--write"]:
    trees = export_trees(_fixed_root())
    shutil.rmtree(_fixed_root(), ignore_errors=True)
    GOLDEN.write_text(json.dumps(trees, indent=1, sort_keys=True) + "\n")
