"""Export at the speed of a copy: ``anogen export`` against ``cp -r`` of exactly the files it writes.

    .venv/bin/python -m bench.export [--samples 10000] [--repeats 3] [--work DIR] [--json FILE]

A synthetic synth folder (``--samples`` accepted 64 px samples over two defect types, plus a few rejected attempts,
written as ``anogen synth`` writes them: PNGs, ``manifest.jsonl``, ``run.json``) and a 64 px MVTec category
(72 real normals) are generated in a scratch folder; no model is needed. Sizes match, so no file needs a
conversion. Timed side by side (interleaved, warm cache, one untimed warm-up round, medians of ``--repeats``), all
on the scratch folder's file system. Nothing is deleted until every round has run (each run writes a folder of
its own): on ext4 without a journal, files created within a minute or more of deleting many cost several times
more, whoever deletes. Start it a few minutes after any large deletion on the same disk (another bench run's
clean-up included). Every tree stays until the end: at 10,000 samples about 2.5 GB of scratch space.

* ``export_copy`` / ``export_hardlink``: the library call :func:`anogen.export.export` (MVTec layout) into a new
  folder; the sources' hashes and probes are cached (the first export's cache, copied untimed);
* ``export_copy_cold``: the same with that cache removed first (a first export: every source read, hashed, probed);
* ``noop``: the same call on a complete, up-to-date export (nothing to do);
* ``cp``: ``cp -r`` of a tree holding exactly the files the export writes (its own output), into a new folder;
* ``cli_copy`` / ``cli_noop``: ``anogen export`` as a subprocess (interpreter start-up and imports included),
  reported separately.

Goals (issue 16): export <= 1.5x cp; no-op re-export <= 0.2x cp. ``python -m bench --parts export`` runs this
and records it in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

if __package__ in (None, ""):  # `python bench/export.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import interleaved  # noqa: E402

GOALS = {"export": 1.5, "noop": 0.2}
SIZE = 64
DEFECTS = ("crack", "scratch")
N_TRAIN, N_TEST_GOOD = 60, 12


def _save(path: Path, array: np.ndarray) -> None:
    Image.fromarray(array).save(path, format="PNG", compress_level=6)


def make_world(root: Path, samples: int, seed: int = 0) -> dict[str, Path]:
    """A 64 px MVTec category ``widget`` and a synth folder of ``samples`` accepted samples (64 px, two defects).

    Rows follow docs/architecture.md ("Synth output"); every fifth hundred attempt is rejected, as synth leaves them.
    """
    rng = np.random.default_rng(seed)
    cat = root / "data" / "widget"
    for split, n in (("train", N_TRAIN), ("test", N_TEST_GOOD)):
        folder = cat / split / "good"
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(n):
            _save(folder / f"{i:03d}.png", rng.integers(40, 200, (SIZE, SIZE, 3), dtype=np.uint8))
    for sub in ("test/crack", "ground_truth/crack"):
        (cat / sub).mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    for i in range(2):
        disc = (xx - 20 - 8 * i) ** 2 + (yy - 30) ** 2 <= 64
        image = rng.integers(40, 200, (SIZE, SIZE, 3), dtype=np.uint8)
        image[disc] = 255
        _save(cat / "test" / "crack" / f"{i:03d}.png", image)
        _save(cat / "ground_truth" / "crack" / f"{i:03d}_mask.png", np.where(disc, 255, 0).astype(np.uint8))
    synth = root / "synth"
    per_defect = [samples // len(DEFECTS) + (1 if k < samples % len(DEFECTS) else 0) for k in range(len(DEFECTS))]
    for defect, wanted in zip(DEFECTS, per_defect, strict=True):
        folder = synth / "widget" / defect
        for sub in ("image", "part", "mask"):
            (folder / sub).mkdir(parents=True, exist_ok=True)
        rows, accepted, attempt = [], 0, 0
        while accepted < wanted:
            name = f"{attempt:06d}"
            ok = attempt % 500 != 499
            cx, cy, r = rng.integers(12, SIZE - 12), rng.integers(12, SIZE - 12), rng.integers(3, 9)
            mask = ((xx - cx) ** 2 + (yy - cy) ** 2 <= r * r) if ok else np.zeros((SIZE, SIZE), bool)
            image = rng.integers(40, 200, (SIZE, SIZE, 3), dtype=np.uint8)
            image[mask] = 255
            part = np.full((SIZE, SIZE, 3), 128, np.uint8)
            part[mask] = (200, 30, 30)
            _save(folder / "image" / f"{name}.png", image)
            _save(folder / "part" / f"{name}.png", part)
            _save(folder / "mask" / f"{name}.png", np.where(mask, 255, 0).astype(np.uint8))
            rows.append({"schema_version": 1, "id": attempt, "name": name, "seed": 1000 + attempt,
                         "category": "widget", "defect": defect, "accepted": ok,
                         "reason": None if ok else "empty_mask", "mask_area": round(float(mask.mean()), 6),
                         "image": f"image/{name}.png", "part": f"part/{name}.png", "mask": f"mask/{name}.png",
                         "adapter_sha256": "ab" * 32})
            accepted += ok
            attempt += 1
        (folder / "manifest.jsonl").write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))
        run = {"schema_version": 1, "anogen_version": "0.1.0", "adapter": {"path": "runs/widget/" + defect,
               "sha256": "ab" * 32}, "category": "widget", "defect": defect,
               "backbone": {"source": "toy", "content_hash": "00"},
               "data": {"root": str(cat), "format": "mvtec", "category": "widget", "image_size": [SIZE, SIZE],
                        "grayscale": False, "kind": "object"},
               "sample": {"steps": 20}, "mask": {"threshold": 0.12}, "seed": 0, "count": wanted}
        (folder / "run.json").write_text(json.dumps(run, sort_keys=True))
    return {"data": cat, "synth": synth}


def _cli() -> list[str]:
    exe = Path(sys.executable).with_name("anogen")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "anogen"]


def run(samples: int, repeats: int, work: Path, *, cli: bool = True) -> dict[str, Any]:
    """Generate the world under ``work``, time every contestant, return timings, ratios and the machine load.

    The exports' source caches go under ``work`` too (``ANOGEN_CACHE``), so that nothing is left in the user's."""
    saved_cache = os.environ.get("ANOGEN_CACHE")
    os.environ["ANOGEN_CACHE"] = str(work / "cache")
    try:
        return _run(samples, repeats, work, cli=cli)
    finally:
        if saved_cache is None:
            os.environ.pop("ANOGEN_CACHE", None)
        else:
            os.environ["ANOGEN_CACHE"] = saved_cache


def _run(samples: int, repeats: int, work: Path, *, cli: bool) -> dict[str, Any]:
    import anogen.export.writer as writer
    from anogen.export import ExportConfig, export
    from anogen.export.probe import cache_file

    load_before = [round(x, 2) for x in os.getloadavg()]
    started = time.perf_counter()
    world = make_world(work / "world", samples)
    generate_s = time.perf_counter() - started

    def config(out: Path, link: str = "copy") -> ExportConfig:
        return ExportConfig(format="mvtec", out=out, data=world["data"], link=link)

    reference = work / "reference"
    first = export([world["synth"]], config(reference))
    files = sorted(p for p in reference.rglob("*") if p.is_file())
    noop_out = work / "noop"
    export([world["synth"]], config(noop_out))
    cli_args = [*_cli(), "export", str(world["synth"]), "--data", str(world["data"]), "--format", "mvtec",
                "--quiet", "--out"]
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    # The one sync before export.json, timed apart: it flushes the whole file system, others' writes included.
    sync_s: list[float] = []
    real_sync = writer.sync_filesystem

    def timed_sync(path: Any) -> None:
        t0 = time.perf_counter()
        real_sync(path)
        sync_s.append(time.perf_counter() - t0)

    writer.sync_filesystem = timed_sync

    # Every timed run writes a folder of its own and nothing is deleted until the end: on ext4 without a journal
    # (this machine's disk), creating files within a minute or more of deleting many scans the recently deleted
    # inodes on every create, which made whichever contestant followed a deletion several times slower.
    outs: dict[str, Path] = {}
    made = itertools.count()

    def new_out(name: str, warm: bool) -> Callable[[], None]:
        # cp's cache is never read; it gets one anyway, so that every contestant's untimed set-up is the same.
        def enter() -> None:
            outs[name] = work / "runs" / f"{name}-{next(made)}"
            cached = cache_file(outs[name].resolve())  # a new folder: no cache yet
            if warm:  # a re-export elsewhere: the sources' hashes and probes known from the earlier runs
                cached.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(cache_file(reference.resolve()), cached)
        return enter

    def run_cli(out: Path) -> None:
        subprocess.run([*cli_args, str(out)], check=True, env=env, capture_output=True)

    fns = {
        "cp": lambda: subprocess.run(["cp", "-r", str(reference), str(outs["cp"])], check=True),
        "export_copy": lambda: export([world["synth"]], config(outs["export_copy"])),
        # A first export: no cache of the sources' hashes and probes (every source is read, hashed, probed).
        "export_copy_cold": lambda: export([world["synth"]], config(outs["export_copy_cold"])),
        "export_hardlink": lambda: export([world["synth"]], config(outs["export_hardlink"], "hardlink")),
        "noop": lambda: export([world["synth"]], config(noop_out)),
    }
    if cli:
        fns["cli_copy"] = lambda: run_cli(outs["cli_copy"])
        fns["cli_noop"] = lambda: run_cli(noop_out)
    around = {name: (new_out(name, warm=name != "export_copy_cold"), lambda: None)
              for name in ("cp", "export_copy", "export_copy_cold", "export_hardlink", "cli_copy") if name in fns}
    (work / "runs").mkdir()
    try:
        timings = interleaved(fns, repeats, warmup=1, around=around)
    finally:
        writer.sync_filesystem = real_sync
    cp = timings["cp"]["median_s"]
    ratios = {name: timings[name]["median_s"] / cp for name in timings if name != "cp"}
    # The exported images are the same whichever way they were placed (export.json and the manifest record how).
    same = (_tree_hashes(outs["export_copy"]) == _tree_hashes(reference) == _tree_hashes(outs["export_hardlink"])
            == _tree_hashes(outs["export_copy_cold"]))
    return {
        "samples": samples,
        "files": len(files),
        "bytes": sum(p.stat().st_size for p in files),
        "written_first": first.written,
        "repeats": repeats,
        "generate_s": round(generate_s, 1),
        "timings": timings,
        "ratios": ratios,
        "sync_s_median": sorted(sync_s)[len(sync_s) // 2] if sync_s else None,
        "goals": GOALS,
        "trees_identical": same,
        "load_average_before": load_before,
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
    }


def task_export(args: dict[str, Any]) -> dict[str, Any]:
    """The ``export`` part of ``python -m bench`` (run in a worker process)."""
    # A new folder, not a cleaned old one: see run() on deleting before timing.
    Path(args["work"]).mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="export-", dir=args["work"]))
    try:
        return run(int(args["samples"]), int(args["repeats"]), work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _tree_hashes(root: Path) -> dict[str, str]:
    import hashlib

    out = {}
    for path in sorted(root.rglob("*.png")):
        rel = path.relative_to(root).as_posix()
        if path.is_file():
            out[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def _verdict(ratio: float, goal: float) -> str:
    return "**met**" if ratio <= goal else "**not met**"


def goal_rows(result: dict[str, Any]) -> list[str]:
    """The rows of the report's goal table (columns: goal, backbone, measured, goal, verdict)."""
    r, n = result["ratios"], f"{result['samples']:,} samples"
    return [
        f"| export `--link copy` vs `cp -r` of the same files | {n} | {r['export_copy']:.2f}x | "
        f"<= {GOALS['export']}x | {_verdict(r['export_copy'], GOALS['export'])} |",
        f"| same, first export (no hash cache) | {n} | {r['export_copy_cold']:.2f}x | "
        f"<= {GOALS['export']}x | {_verdict(r['export_copy_cold'], GOALS['export'])} |",
        f"| export `--link hardlink` vs `cp -r` of the same files | {n} | {r['export_hardlink']:.2f}x | "
        f"<= {GOALS['export']}x | {_verdict(r['export_hardlink'], GOALS['export'])} |",
        f"| no-op re-export vs `cp -r` of the same files | {n} | {r['noop']:.2f}x | <= {GOALS['noop']}x | "
        f"{_verdict(r['noop'], GOALS['noop'])} |",
    ]


def section(result: dict[str, Any]) -> list[str]:
    """The report's export section: what was measured, ratios against the goals, the raw medians."""
    lines = ["### Export vs `cp -r`", ""]
    if "error" in result:
        return [*lines, f"Failed: {result['error'][:500]}", ""]
    r, t = result["ratios"], result["timings"]
    sync = result.get("sync_s_median")
    lines += [
        f"`python -m bench.export --samples {result['samples']} --repeats {result['repeats']}`: {result['samples']:,} "
        f"accepted 64 px samples (two defect types) and a 64 px MVTec category (72 normals), MVTec layout, no "
        f"conversion needed: the export writes {result['files']:,} files ({result['bytes'] / 1e6:.1f} MB). "
        f"Library calls (`anogen.export.export`) against `cp -r` of a tree holding exactly the files the export "
        f"writes, on the same file system, warm page cache, medians of {result['repeats']} interleaved runs after a "
        f"warm-up round; load average before / after {result['load_average_before']} / "
        f"{result['load_average_after']} on {result['cores']} cores (shared)."
        + (f" Measured {result['measured_at']} on {result['machine'].get('cpu')}." if result.get("measured_at")
           and isinstance(result.get("machine"), dict) else ""),
        "",
        "| measured | vs `cp -r` | goal | verdict |",
        "| --- | --- | --- | --- |",
        f"| export, `--link copy` (library call) | {r['export_copy']:.2f}x | <= {GOALS['export']}x | "
        f"{_verdict(r['export_copy'], GOALS['export'])} |",
        f"| export, `--link copy`, first export (no hash cache) | {r['export_copy_cold']:.2f}x | "
        f"<= {GOALS['export']}x | {_verdict(r['export_copy_cold'], GOALS['export'])} |",
        f"| export, `--link hardlink` (library call) | {r['export_hardlink']:.2f}x | <= {GOALS['export']}x | "
        f"{_verdict(r['export_hardlink'], GOALS['export'])} |",
        f"| no-op re-export (library call) | {r['noop']:.2f}x | <= {GOALS['noop']}x | "
        f"{_verdict(r['noop'], GOALS['noop'])} |",
    ]
    if "cli_copy" in r:
        lines += [f"| `anogen export --link copy` (CLI, process start included) | {r['cli_copy']:.2f}x | - | - |",
                  f"| `anogen export`, nothing to do (CLI) | {r['cli_noop']:.2f}x | - | - |"]
    lines += ["", "| contestant | median s | range |", "| --- | --- | --- |"]
    for name, row in t.items():
        lines.append(f"| {name} | {row['median_s']:.3f} | {row['min_s']:.3f} - {row['max_s']:.3f} (n={row['n']}) |")
    if sync is not None:
        lines += ["", f"Of each export, the one `syncfs` before `export.json` (what makes a finished export durable "
                      f"against a power loss; `cp` does not sync) took {sync:.3f} s (median)."]
    if not result.get("trees_identical", True):
        lines += ["", "**The trees written by copy, hardlink and the reference export differ.**"]
    return [*lines, ""]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.export", description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=10000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temporary one)")
    parser.add_argument("--json", type=Path, default=None, help="write the raw result here")
    parser.add_argument("--no-cli", action="store_true", help="time the library calls only")
    args = parser.parse_args(argv)
    work = args.work or Path(tempfile.mkdtemp(prefix="anogen-bench-export-"))
    try:
        result = run(args.samples, args.repeats, work, cli=not args.no_cli)
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    print("\n".join(section(result)))  # noqa: T201


if __name__ == "__main__":
    main()
