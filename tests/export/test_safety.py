"""Export safety: hostile names, idempotence, --force, foreign folders, links, interruption, stale files."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest
from helpers import make_mvtec, make_synth, read_rows
from PIL import Image

import anogen.export.writer as writer
from anogen.errors import InputError
from anogen.export import ExportConfig, export


def _tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _mtimes(root: Path) -> dict[str, int]:
    return {p.relative_to(root).as_posix(): p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}


def test_path_traversal_names_stay_inside(tmp_path: Path) -> None:
    """A category '../../evil' and a defect '../x' from run.json cannot write outside the export folder."""
    synth = tmp_path / "synth"
    make_synth(
        synth,
        category="../../evil",
        defect="../x",
        folder_names=("cat", "def"),
        data={"image_size": [32, 32], "grayscale": False, "format": "folder"},
    )
    out = tmp_path / "deep" / "out"
    for fmt in ("coco", "mvtec"):
        target = out / fmt
        if fmt == "mvtec":
            data = make_mvtec(tmp_path / "data", category="evil")
            export([synth], ExportConfig(format=fmt, out=target, data=data))
        else:
            export([synth], ExportConfig(format=fmt, out=target))
        written = [p.resolve() for p in tmp_path.rglob("*") if p.is_file()]
        outside = [
            p
            for p in written
            if not (
                p.is_relative_to(out.resolve())
                or p.is_relative_to(synth.resolve())
                or p.is_relative_to((tmp_path / "data").resolve())
            )
        ]
        assert outside == []
    assert (out / "mvtec" / "evil" / "test" / "x" / "000.png").is_file()
    assert (out / "coco" / "images" / "evil" / "x" / "000.png").is_file()
    assert not (tmp_path / "evil").exists() and not (tmp_path / "deep" / "x").exists()


def test_reexport_is_a_noop_and_force_rebuilds(world: dict[str, Path]) -> None:
    out = world["tmp"] / "out"
    config = ExportConfig(format="mvtec", out=out, data=world["data"])
    first = export([world["synth"]], config)
    before, times = _tree(out), _mtimes(out)
    again = export([world["synth"]], config)
    assert again.status == "up_to_date" and again.written == 0
    assert _tree(out) == before and _mtimes(out) == times
    forced = export([world["synth"]], ExportConfig(format="mvtec", out=out, data=world["data"], force=True))
    assert forced.status == "written" and forced.written == first.written
    assert _tree(out) == before


def test_changed_inputs_update_only_what_changed_and_drop_stale_files(world: dict[str, Path]) -> None:
    out = world["tmp"] / "out"
    export([world["synth"]], ExportConfig(format="mvtec", out=out, data=world["data"]))
    assert (out / "widget" / "test" / "scratch" / "001.png").is_file()
    # Re-run with only the crack folder: the scratch files must go, the crack files are kept as they are.
    result = export([world["synth"] / "widget" / "crack"], ExportConfig(format="mvtec", out=out, data=world["data"]))
    assert result.written == 0 and result.removed == 4
    assert not (out / "widget" / "test" / "scratch").exists()
    assert not (out / "widget" / "ground_truth" / "scratch").exists()
    paths = {r["path"] for r in read_rows(out / "export_manifest.jsonl")}
    assert not any("scratch" in p for p in paths)


def test_refuses_foreign_folder_unless_forced(world: dict[str, Path]) -> None:
    out = world["tmp"] / "someone_else"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(InputError, match="holds no anogen export"):
        export([world["synth"]], ExportConfig(format="mvtec", out=out, data=world["data"]))
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]
    export([world["synth"]], ExportConfig(format="mvtec", out=out, data=world["data"], force=True))
    assert (out / "notes.txt").read_text() == "mine"  # outside the export's own folders: left alone
    assert (out / "export.json").is_file()


def test_refuses_to_export_into_its_inputs(world: dict[str, Path]) -> None:
    with pytest.raises(InputError, match="overlaps an input"):
        export([world["synth"]], ExportConfig(format="mvtec", out=world["data"].parent, data=world["data"], force=True))
    with pytest.raises(InputError, match="overlaps an input"):
        export(
            [world["synth"]],
            ExportConfig(format="mvtec", out=world["synth"] / "widget" / "crack" / "x", data=world["data"], force=True),
        )


def test_hardlink_and_fallback_across_devices(world: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    src_train = sorted((world["data"] / "train" / "good").iterdir())[0]
    out = world["tmp"] / "linked"
    export([world["synth"]], ExportConfig(format="mvtec", out=out, data=world["data"], link="hardlink"))
    linked = out / "widget" / "train" / "good" / "000.png"
    assert os.path.samefile(linked, src_train)

    def cross_device(*args, **kwargs):
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(os, "link", cross_device)
    out2 = world["tmp"] / "copied"
    export([world["synth"]], ExportConfig(format="mvtec", out=out2, data=world["data"], link="hardlink"))
    copied = out2 / "widget" / "train" / "good" / "000.png"
    assert not os.path.samefile(copied, src_train)
    assert copied.read_bytes() == src_train.read_bytes()
    rows = {r["path"]: r for r in read_rows(out2 / "export_manifest.jsonl")}
    assert rows["widget/train/good/000.png"]["placed"] == "copy"
    assert not any(p.name.endswith(".tmp") for p in out2.rglob("*"))


def test_symlinks_point_at_sources(world: dict[str, Path]) -> None:
    out = world["tmp"] / "sym"
    export([world["synth"]], ExportConfig(format="mvtec", out=out, data=world["data"], link="symlink"))
    link = out / "widget" / "train" / "good" / "000.png"
    assert link.is_symlink()
    assert Path(os.readlink(link)) == sorted((world["data"] / "train" / "good").iterdir())[0].resolve()
    # Synthetic images are 32 px and the category 40 px: converted, so real files, not links.
    assert not (out / "widget" / "test" / "crack" / "000.png").is_symlink()
    assert (
        export([world["synth"]], ExportConfig(format="mvtec", out=out, data=world["data"], link="symlink")).status
        == "up_to_date"
    )


@pytest.mark.parametrize("fmt", ["mvtec", "coco"])
def test_interrupted_export_resumes_to_the_clean_result(
    world: dict[str, Path], monkeypatch: pytest.MonkeyPatch, fmt: str
) -> None:
    clean = world["tmp"] / "clean"
    export([world["synth"]], ExportConfig(format=fmt, out=clean, data=world["data"], include_real_test=True))

    out = world["tmp"] / "crashy"
    real_write = writer.write_planned
    calls = {"n": 0}

    def crash_after_five(pf, dst_root, link, **kwargs):
        if calls["n"] == 5:
            # Leave a torn temp file behind like a killed process would, then die.
            (dst_root / pf.rel).parent.mkdir(parents=True, exist_ok=True)
            (dst_root / pf.rel).parent.joinpath(f".{Path(pf.rel).name}.999.tmp").write_bytes(b"\x89PNG half")
            raise KeyboardInterrupt
        calls["n"] += 1
        return real_write(pf, dst_root, link, **kwargs)

    monkeypatch.setattr(writer, "write_planned", crash_after_five)
    with pytest.raises(KeyboardInterrupt):
        export([world["synth"]], ExportConfig(format=fmt, out=out, data=world["data"], include_real_test=True))
    assert not (out / "export.json").exists()
    assert writer.dir_state(out) == "partial"
    finished = [p for p in out.rglob("*.png") if not p.name.startswith(".")]
    assert len(finished) == 5
    for path in finished:  # every file at a final path is complete
        with Image.open(path) as img:
            img.load()
    monkeypatch.setattr(writer, "write_planned", real_write)

    result = export([world["synth"]], ExportConfig(format=fmt, out=out, data=world["data"], include_real_test=True))
    assert result.status == "resumed" and result.reused == 5
    got, want = _tree(out), _tree(clean)
    # Paths and bytes are identical; only the recorded output folder differs in export.json / the yaml.
    assert sorted(got) == sorted(want)
    for rel in want:
        if rel not in ("export.json",):
            assert got[rel] == want[rel], rel
