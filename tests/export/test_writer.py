"""The fast writer: PNG probing against Pillow, fingerprints against their JSON spec, the source cache, SIGKILL."""

from __future__ import annotations

import hashlib
import io
import json
import os
import signal
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from helpers import make_mvtec, make_synth
from PIL import Image

import anogen.export.placing as placing
import anogen.export.writer as writer
from anogen.export import ExportConfig, PlannedFile, Provenance, export
from anogen.export.probe import cache_file, probe

# ------------------------------------------------------------------------------------------------ probing


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def _png_with_filters(pixels: np.ndarray, filters: list[int]) -> bytes:
    """An 8-bit grey PNG whose row r is stored with filter ``filters[r]`` (PNG spec, section 9), written by hand."""
    h, w = pixels.shape
    prev = np.zeros(w, np.int32)
    raw = bytearray()
    for r in range(h):
        row = pixels[r].astype(np.int32)
        left = np.concatenate([[0], row[:-1]])
        up_left = np.concatenate([[0], prev[:-1]])
        if filters[r] == 0:
            out = row
        elif filters[r] == 1:
            out = row - left
        elif filters[r] == 2:
            out = row - prev
        elif filters[r] == 3:
            out = row - (left + prev) // 2
        else:
            p = left + prev - up_left
            pa, pb, pc = abs(p - left), abs(p - prev), abs(p - up_left)
            pred = np.where((pa <= pb) & (pa <= pc), left, np.where(pb <= pc, prev, up_left))
            out = row - pred
        raw += bytes([filters[r]]) + (out % 256).astype(np.uint8).tobytes()
        prev = row
    header = struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", zlib.compress(bytes(raw)))
            + _chunk(b"IEND", b""))


def _pillow_facts(data: bytes) -> tuple[tuple[int, int, str] | None, bool | None]:
    with Image.open(io.BytesIO(data)) as img:
        facts = (img.size[0], img.size[1], img.mode) if img.format == "PNG" else None
        binary = bool(np.isin(np.unique(np.asarray(img)), (0, 255)).all()) if img.mode == "L" else None
    return facts, binary


def _saved(array: np.ndarray, **kwargs) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG", **kwargs)
    return buffer.getvalue()


def test_probe_agrees_with_pillow_on_every_filter_and_layout() -> None:
    rng = np.random.default_rng(0)
    cases = []
    for trial in range(40):
        binary = rng.random((9, 13)) < 0.4
        pixels = np.where(binary, 255, 0).astype(np.uint8)
        if trial % 3 == 0:
            pixels[rng.integers(9), rng.integers(13)] = rng.integers(1, 255)  # one stray grey value
        cases.append(_png_with_filters(pixels, list(rng.integers(0, 5 if trial % 2 else 3, size=9))))
    cases += [
        _saved(np.where(rng.random((40, 40)) < 0.5, 255, 0).astype(np.uint8)),
        _saved(rng.integers(0, 256, (20, 30), dtype=np.uint8)),
        _saved(rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)),
        _saved(rng.integers(0, 256, (20, 30, 4), dtype=np.uint8)),
        _saved(rng.integers(0, 65535, (8, 8), dtype=np.uint16)),
        _saved(rng.integers(0, 256, (8, 8), dtype=np.uint8), optimize=True),
    ]
    palette = Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).convert("P")
    buffer = io.BytesIO()
    palette.save(buffer, format="PNG")
    cases.append(buffer.getvalue())
    for data in cases:
        got = probe(data, need_binary=True)
        want_facts, want_binary = _pillow_facts(data)
        assert got.sha256 == hashlib.sha256(data).hexdigest()
        assert got.png == want_facts
        if want_facts is not None and want_facts[2] == "L":
            assert got.binary == want_binary
    # A damaged chunk, a JPEG and garbage: whatever Pillow makes of them, never a crash.
    broken = bytearray(cases[0])
    broken[20] ^= 0xFF
    for data in (bytes(broken), b"not an image", _jpeg()):
        try:
            want = _pillow_facts(data)[0]
        except OSError:
            want = None
        assert probe(data, need_binary=True).png == want


def _jpeg() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buffer, format="JPEG")
    return buffer.getvalue()


def test_fingerprint_is_the_sha256_of_its_json_spec() -> None:
    """Spelled out for speed, it must equal the json.dumps form every earlier export recorded."""
    for link in ("copy", "hardlink", "symlink"):
        for size in (None, (64, 48)):
            for rel in ('cat/test/d"x/ü.png', "widget/train/good/000.png"):
                pf = PlannedFile(rel, "mask", Path("/data/a b/ä.png"), Provenance("real", Path("/x"), "c"), size, "L")
                spec = {"rel": rel, "role": "mask", "src_sha256": "ab" * 32, "size": list(size) if size else None,
                        "mode": "L", "link": link, "render": 1, "src": str(pf.src) if link == "symlink" else None}
                want = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()
                assert pf.fingerprint("ab" * 32, link) == want


# ---------------------------------------------------------------------------------------- the source cache


def _count_reads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    reads: list[str] = []
    real = placing.read_source

    def counting(path: str, size: int) -> bytes:
        reads.append(path)
        return real(path, size)

    monkeypatch.setattr(placing, "read_source", counting)
    return reads


def _age(root: Path, seconds: float = 60.0) -> None:
    """Backdate every file: the cache skips files younger than its racy window (2 s)."""
    past = time.time() - seconds
    for path in root.rglob("*"):
        if path.is_file():
            os.utime(path, (past, past))


def test_reexport_reads_only_changed_sources_and_keeps_its_cache_outside(
    world: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    _age(world["tmp"])
    out = world["tmp"] / "out"
    config = ExportConfig(format="mvtec", out=out, data=world["data"], size="native")
    export([world["synth"]], config)
    reads = _count_reads(monkeypatch)
    assert export([world["synth"]], config).status == "up_to_date"
    assert reads == []  # recognised from stat calls alone
    # The same size, new bytes and mtime: only that source is read again, and only its output rewritten.
    changed = world["synth"] / "widget" / "crack" / "image" / "000001.png"
    with Image.open(changed) as img:
        pixels = np.asarray(img).copy()
    pixels[0, 0] = 255 - pixels[0, 0]
    Image.fromarray(pixels).save(changed)
    result = export([world["synth"]], config)
    assert set(reads) == {str(changed)}  # hashed for the up-to-date test, then copied
    assert result.status == "written" and result.written == 1
    rows = {json.loads(line)["path"]: json.loads(line) for line in (out / "export_manifest.jsonl").open()}
    assert rows["widget/test/crack/001.png"]["sha256"] == hashlib.sha256(changed.read_bytes()).hexdigest()
    # Nothing of the cache is inside the export; it is where ANOGEN_CACHE says.
    assert cache_file(out.resolve()).is_file()
    assert not cache_file(out.resolve()).is_relative_to(out)
    assert sorted(p.name for p in out.iterdir()) == ["LICENSE-NOTICE.txt", "export.json", "export_manifest.jsonl",
                                                     "widget"]


def test_an_edited_output_is_rewritten(world: dict[str, Path]) -> None:
    out = world["tmp"] / "out"
    config = ExportConfig(format="mvtec", out=out, data=world["data"])
    export([world["synth"]], config)
    target = out / "widget" / "train" / "good" / "000.png"
    want = target.read_bytes()
    target.write_bytes(b"broken")
    result = export([world["synth"]], config)
    assert result.written == 1 and target.read_bytes() == want


# ------------------------------------------------------------------------------------------- SIGKILL


_CHILD = """
import sys, time
sys.path.insert(0, {helpers!r})
import anogen.export.writer as w
from anogen.export import ExportConfig, export
w.CHECKPOINT_FILES = 1
real = w.write_planned
def slow(*args, **kwargs):
    time.sleep(0.02)
    return real(*args, **kwargs)
w.write_planned = slow
export([{synth!r}], ExportConfig(format="mvtec", out={out!r}, data={data!r}, include_real_test=True))
"""


def test_sigkill_mid_export_resumes_to_the_clean_tree(tmp_path: Path) -> None:
    data = make_mvtec(tmp_path / "data", defects={"crack": 6}, n_train=20)
    synth = tmp_path / "synth"
    make_synth(synth, defect="crack", attempts=40, split={"train": ["000"], "held_out": ["001", "002"]})
    clean = tmp_path / "clean"
    config = {"format": "mvtec", "data": data, "include_real_test": True}
    export([synth], ExportConfig(out=clean, **config))
    out = tmp_path / "killed"
    script = _CHILD.format(helpers=str(Path(__file__).parent), synth=str(synth), out=str(out), data=str(data))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    child = subprocess.Popen([sys.executable, "-c", script], env=env)
    journal = out / writer.JOURNAL
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline:
            if journal.is_file() and journal.read_text().count("\n") >= 10:
                break
            assert child.poll() is None, "the export finished before it could be killed"
            time.sleep(0.01)
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.wait()
    assert child.returncode == -signal.SIGKILL
    assert not (out / "export.json").exists() and writer.dir_state(out) == "partial"
    for path in out.rglob("*.png"):
        if not path.name.startswith("."):
            with Image.open(path) as img:
                img.load()  # every file at a final path is complete
    result = export([synth], ExportConfig(out=out, **config))
    assert result.status == "resumed" and result.reused >= 9
    got = {p.relative_to(out).as_posix(): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    want = {p.relative_to(clean).as_posix(): p.read_bytes() for p in clean.rglob("*") if p.is_file()}
    assert sorted(got) == sorted(want)
    assert all(got[rel] == want[rel] for rel in want if rel != "export.json")


def test_conversions_in_worker_processes_write_the_same_tree(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Above POOL_MIN_FILES conversions go to worker processes; the files are those of the inline path."""
    pools = []
    real_pool = placing.ProcessPoolExecutor

    def spy(*args, **kwargs):
        pools.append(args)
        return real_pool(*args, **kwargs)

    monkeypatch.setattr(placing, "ProcessPoolExecutor", spy)
    data = make_mvtec(tmp_path / "data", defects={"crack": 2})
    synth = tmp_path / "synth"
    # 32 px samples into a 40 px category: every synthetic image and mask is converted.
    make_synth(synth, defect="crack", attempts=placing.POOL_MIN_FILES // 2 + 8, rejected=())
    trees = {}
    for workers in (1, 2):
        out = tmp_path / f"w{workers}"
        result = export([synth], ExportConfig(format="mvtec", out=out, data=data, workers=workers))
        assert result.written == len(list(out.rglob("*.png")))
        trees[workers] = {p.relative_to(out).as_posix(): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert pools == [(2,)]  # only the workers=2 run started a pool
    assert sorted(trees[1]) == sorted(trees[2])
    assert all(trees[1][rel] == trees[2][rel] for rel in trees[1] if rel not in ("export.json",))
    placed = [json.loads(line).get("placed") for line in (tmp_path / "w2" / "export_manifest.jsonl").open()]
    assert placed.count("converted") >= placing.POOL_MIN_FILES


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*")
            if p.is_file() and p.name != "export.json"}


@pytest.mark.parametrize("link", ["copy", "hardlink"])
def test_files_placed_by_worker_processes_make_the_same_tree(tmp_path: Path, link: str,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """Above POOL_MIN_FILES, copies go to worker processes in batches (links are made inline): the tree, the
    manifest and the way each file was placed are those of the one-process path."""
    sent: list[str] = []
    real_copy = placing.Workers.copy

    def spy(self, pf, *args, **kwargs):
        sent.append(pf.rel)
        return real_copy(self, pf, *args, **kwargs)

    monkeypatch.setattr(placing.Workers, "copy", spy)
    data = make_mvtec(tmp_path / "data", defects={"crack": 2}, size=32)
    synth = tmp_path / "synth"
    make_synth(synth, defect="crack", attempts=placing.POOL_MIN_FILES // 2 + placing.BATCH_FILES + 8, rejected=())
    trees = {}
    for workers in (1, 2):
        out = tmp_path / f"w{workers}"
        sent.clear()
        result = export([synth], ExportConfig(format="mvtec", out=out, data=data, workers=workers, link=link))
        assert result.written == len(list(out.rglob("*.png")))
        trees[workers] = _files(out)
    # With two workers every file but those below the threshold at the end went to a worker (copy), or none did.
    assert len(sent) > placing.POOL_MIN_FILES if link == "copy" else sent == []
    assert trees[1] == trees[2]
    placed = {json.loads(line).get("placed") for line in (tmp_path / "w2" / "export_manifest.jsonl").open()}
    assert placed == {link, None}  # None: the generated files (notice)
    if link == "hardlink":
        image = next((tmp_path / "w2").rglob("*.png"))
        assert image.stat().st_nlink == 3  # the source, and its links in w1 and w2


def test_export_workers_leave_ctrl_c_to_the_parent() -> None:
    import signal

    workers = placing.Workers(2)
    try:
        workers._submit(signal.getsignal, signal.SIGINT, finish=lambda handler: [handler])
        assert workers.collect(everything=True) == [signal.SIG_IGN]
    finally:
        workers.close()


def test_interrupted_while_workers_place_files_resumes_to_the_same_tree(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """Ctrl-C with batches in flight: what the workers finished is journaled (the rerun reuses it), nothing half
    written is left at a final path, and the rerun gives the uninterrupted tree."""
    data = make_mvtec(tmp_path / "data", defects={"crack": 2}, size=32)
    synth = tmp_path / "synth"
    make_synth(synth, defect="crack", attempts=3 * placing.POOL_MIN_FILES, rejected=())
    config = {"format": "mvtec", "data": data, "workers": 2}
    export([synth], ExportConfig(out=tmp_path / "clean", **config))
    events = {"n": 0}
    real_report = writer.report

    def interrupt_later(progress, stage, done, total):
        events["n"] += 1
        if events["n"] == 3:  # several batches sent by now
            raise KeyboardInterrupt
        real_report(progress, stage, done, total)

    monkeypatch.setattr(writer, "report", interrupt_later)
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        export([synth], ExportConfig(out=out, **config))
    monkeypatch.setattr(writer, "report", real_report)
    assert writer.dir_state(out) == "partial" and not (out / "export.json").exists()
    journaled = [json.loads(line) for line in (out / writer.JOURNAL).read_text().splitlines()[1:]]
    assert journaled and all((out / row["rel"]).stat().st_size == row["bytes"] for row in journaled)
    assert not [p for p in out.rglob(".*.tmp")]
    # Every file at a final path is journaled, those the workers placed included (abort() handed them back).
    assert {p.relative_to(out).as_posix() for p in out.rglob("*.png")} == {row["rel"] for row in journaled}
    result = export([synth], ExportConfig(out=out, **config))
    assert result.status == "resumed" and result.reused >= len(journaled)
    assert _files(out) == _files(tmp_path / "clean")


# ------------------------------------------------------------------------------------------ manifest lines


@pytest.mark.parametrize("seed", [5001, None, True, 2.5, "7"])
@pytest.mark.parametrize("text", ["widget", "naïve \"quoted\" \\ path\n", "日本"])
def test_manifest_line_is_json_dumps_of_the_row(seed, text: str) -> None:
    """The writer spells manifest lines out; they are the bytes json.dumps(sort_keys=True) gives for the row."""
    full = Provenance(kind="synthetic", path=Path(f"/d/{text}.png"), category=text, defect=text, stem=None,
                      synth_dir=Path(f"/s/{text}"), id=3, name=text, seed=seed, adapter_sha256="ab" * 32)
    bare = Provenance(kind="real", path=Path("/d/x.png"), category=text)
    for prov in (full, bare):
        pf = PlannedFile(f"{text}/test/000.png", "image", Path("/d/x.png"), prov, (4, 4), "RGB", split=None,
                         label=text, defect=None, category=text, pair=f"{text}_mask.png")
        for row in ({"bytes": 12, "sha256": "cd" * 32, "placed": "copy"}, {"bytes": None, "sha256": None}):
            want = json.dumps({
                "schema_version": 1, "path": pf.rel, "role": pf.role, "split": pf.split, "label": pf.label,
                "category": pf.category, "defect": pf.defect, "pair": pf.pair,
                "source": {**prov.to_dict(), "sha256": "ef" * 32}, "bytes": row["bytes"], "sha256": row["sha256"],
                "placed": row.get("placed"), "fingerprint": "01" * 32}, sort_keys=True)
            assert writer.manifest_line(pf, row, "ef" * 32, "01" * 32) == want
