"""The no-op shortcut (anogen.export.uptodate): a re-export with nothing changed plans nothing, reads nothing; every
change it must not miss makes the run do the work.

Each test first proves the shortcut is armed (an unchanged re-export is answered without reading a manifest), then
changes one thing and checks that the next run plans and does what a run without the shortcut would do.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import make_synth
from PIL import Image

import anogen.export.placing as placing
import anogen.export.run as run
from anogen.export import ExportConfig, export
from anogen.export.probe import cache_file
from anogen.export.uptodate import state_file


def _age(root: Path, seconds: float = 60.0) -> None:
    """Backdate every file and folder: inputs younger than the racy window (2 s) are never trusted."""
    past = time.time() - seconds
    for path in [root, *root.rglob("*")]:
        os.utime(path, (past, past))


class Spy:
    """Counts planning (synth folders read) and source reads."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.planned = 0
        self.reads: list[str] = []
        real_read_folder, real_read = run.read_synth_folder, placing.read_source

        def read_folder(folder):
            self.planned += 1
            return real_read_folder(folder)

        def read(path: str, size: int) -> bytes:
            self.reads.append(path)
            return real_read(path, size)

        monkeypatch.setattr(run, "read_synth_folder", read_folder)
        monkeypatch.setattr(placing, "read_source", read)

    def reset(self) -> None:
        self.planned = 0
        self.reads.clear()


@pytest.fixture
def armed(world: dict[str, Path], monkeypatch: pytest.MonkeyPatch):
    """An aged world exported once, the shortcut checked to answer the unchanged re-export; returns a rerun.

    Every PNG is stored uncompressed, so that a changed pixel keeps a file's size."""
    for path in world["tmp"].rglob("*.png"):
        with Image.open(path) as img:
            img.load()
            img.save(path, format="PNG", compress_level=0)
    _age(world["tmp"])
    out = world["tmp"] / "out"
    config = ExportConfig(format="mvtec", out=out, data=world["data"], size="native")
    first = export([world["synth"]], config)
    assert first.status == "written"
    spy = Spy(monkeypatch)
    again = export([world["synth"]], config)
    assert again.status == "up_to_date" and (again.files, again.counts) == (first.files, first.counts)
    assert spy.planned == 0 and spy.reads == []  # not a manifest parsed, not a source read
    spy.reset()

    def rerun(**changes):
        return export([world["synth"]], dataclasses.replace(config, **changes))

    return {"out": out, "config": config, "spy": spy, "rerun": rerun, **world}


def _manifest(out: Path) -> dict[str, dict]:
    return {row["path"]: row for row in map(json.loads, (out / "export_manifest.jsonl").open())}


def test_the_state_lives_beside_the_cache_not_in_the_export(armed) -> None:
    out = armed["out"]
    state = state_file(out.resolve())
    assert state.is_file() and state.parent == cache_file(out.resolve()).parent
    assert not state.is_relative_to(out)
    assert sorted(p.name for p in out.iterdir()) == ["LICENSE-NOTICE.txt", "export.json", "export_manifest.jsonl",
                                                     "widget"]


def test_a_source_with_the_same_size_and_a_new_mtime_is_read_again(armed) -> None:
    source = armed["synth"] / "widget" / "crack" / "image" / "000001.png"
    stat = source.stat()
    os.utime(source, ns=(stat.st_atime_ns, stat.st_mtime_ns - 10**9))  # same bytes, same size, another mtime
    result = armed["rerun"]()
    assert armed["spy"].planned > 0 and armed["spy"].reads == [str(source)]  # hashed again: nothing else
    assert result.status == "up_to_date" and result.written == 0


def test_a_source_with_new_bytes_of_the_same_size_is_rewritten(armed) -> None:
    source = armed["synth"] / "widget" / "crack" / "image" / "000001.png"
    size = source.stat().st_size
    with Image.open(source) as img:
        pixels = np.asarray(img).copy()
    pixels[0, 0] = 255 - pixels[0, 0]
    Image.fromarray(pixels).save(source, compress_level=0)
    assert source.stat().st_size == size
    result = armed["rerun"]()
    assert result.status == "written" and result.written == 1
    assert (armed["out"] / "widget/test/crack/001.png").read_bytes() == source.read_bytes()


def test_a_source_of_another_size_is_rewritten(armed) -> None:
    source = armed["data"] / "train" / "good" / "000.png"
    with Image.open(source) as img:
        img.load()
        img.save(source, format="PNG", compress_level=9)  # the same pixels in fewer bytes
    result = armed["rerun"]()
    assert result.status == "written" and result.written == 1
    target = armed["out"] / "widget/train/good/000.png"
    assert target.read_bytes() == source.read_bytes()
    assert _manifest(armed["out"])["widget/train/good/000.png"]["bytes"] == source.stat().st_size


def test_a_deleted_exported_file_is_written_again(armed) -> None:
    target = armed["out"] / "widget" / "ground_truth" / "crack" / "001_mask.png"
    want = target.read_bytes()
    target.unlink()
    result = armed["rerun"]()
    assert result.written == 1 and target.read_bytes() == want


def test_an_exported_file_edited_in_place_is_written_again(armed) -> None:
    target = armed["out"] / "widget" / "train" / "good" / "000.png"
    want = target.read_bytes()
    with open(target, "r+b") as handle:  # same folder, same name: only the file's own stat tells
        handle.write(b"broken")
    result = armed["rerun"]()
    assert result.written == 1 and target.read_bytes() == want


def test_a_stray_file_in_the_export_makes_the_run_plan(armed) -> None:
    # The shortcut vouches only for the tree it recorded; the planned run decides (an unchanged plan leaves the
    # stray, as before; a changed one deletes it with the other files the plan does not hold).
    stray = armed["out"] / "widget" / "train" / "good" / "999.png"
    stray.write_bytes(b"not ours")
    assert armed["rerun"]().status == "up_to_date" and armed["spy"].planned > 0
    result = armed["rerun"](link="hardlink")
    assert result.removed == 1 and not stray.exists()


def test_a_changed_config_is_exported_anew(armed) -> None:
    result = armed["rerun"](link="hardlink")
    placed = [row.get("placed") for row in _manifest(armed["out"]).values() if row["role"] in ("image", "mask")]
    assert result.status == "written" and result.written == len(placed)  # every image and mask, again
    assert set(placed) == {"hardlink"}
    assert armed["rerun"](include_real_test=True).files > result.files


def test_a_new_real_image_is_exported(armed) -> None:
    extra = armed["data"] / "train" / "good" / "003.png"
    extra.write_bytes((armed["data"] / "train" / "good" / "000.png").read_bytes())
    result = armed["rerun"]()
    assert result.status == "written" and (armed["out"] / "widget/train/good/003.png").is_file()


def test_a_changed_synth_result_is_exported(armed) -> None:
    # synth run again into the same folder with more attempts: a new manifest, new samples.
    make_synth(armed["synth"], defect="scratch", attempts=6, rejected=(0, 3), seed=9)
    result = armed["rerun"]()
    assert result.status == "written"
    assert result.counts["widget"]["test/scratch"] == 4


def test_young_inputs_record_no_state(world: dict[str, Path]) -> None:
    out = world["tmp"] / "out"
    export([world["synth"]], ExportConfig(format="mvtec", out=out, data=world["data"], size="native"))
    assert not state_file(out.resolve()).exists()  # just written: their next change could keep size and mtime


def test_force_and_an_interrupted_run_take_the_planned_way(armed, monkeypatch: pytest.MonkeyPatch) -> None:
    assert armed["rerun"](force=True).written > 0
    armed["spy"].reset()
    # An export that died after its start leaves no trusted state behind.
    import anogen.export.writer as writer

    def crash(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(writer, "write_planned", crash)
    with pytest.raises(KeyboardInterrupt):
        armed["rerun"](link="hardlink")
    assert not state_file(armed["out"].resolve()).exists()
