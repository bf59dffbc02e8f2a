"""``python -m bench`` (or ``.venv/bin/python bench/run.py``): run the benchmark, write docs/benchmarks.md.

Parts (``--parts``, all by default):

* ``toy``: speed ratios and peak memory on the toy backbone at its preset's settings (``toy/object``);
* ``sd15``: the same ratios at SD-1.5 size (the published UNet / VAE / CLIP-L configs, random weights): on a CPU
  for one denoising step at 256 px, with a projection to the preset's 30 steps; on a GPU the full setting;
* ``quality``: toy data -> prior -> fit -> synth with SAIM and with ``coupling none``, alignment IoU, the
  ``anogen eval`` table, and export vs a plain copy;
* ``export``: ``anogen export`` of 10,000 synthetic samples against ``cp -r`` of the same files (bench/export.py).
* ``threads``: a toy fit step and synth batch alone and beside busy processes, and two-process ``accelerate``
  fitting, under anogen's thread policy and torch's default (bench/threads.py).

Every measurement runs in its own process (peak memory per measurement); contestants are timed interleaved
(A, B, A, B, ...) and summarised by their medians. Raw results go to docs/benchmarks.json; a run of some parts
keeps the other parts' last results (each part says when it was measured). ``--quick`` checks the plumbing in a
few minutes with small settings (its figures are not meant to be read).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # `python bench/run.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import ROOT, machine, run_worker  # noqa: E402
from bench.report import render  # noqa: E402

logger = logging.getLogger("bench")

PARTS = ("toy", "sd15", "quality", "export", "threads")


def settings(quick: bool, gpu: bool) -> dict[str, dict[str, Any]]:
    """The measurement settings of each part (see docs/benchmarks.md for the reasons)."""
    toy = dict(backbone="toy", pairs=8, steps=20, guidance=2.5, sampler="dpmsolver++", rank=8, saim_width=None,
               repeats=5, bcm=True, fit_pairs=2, fit_repeats=10, calls=2)
    if gpu:
        sd15 = dict(backbone="sd15", resolution=512, pairs=4, steps=30, guidance=2.5, sampler="dpmsolver++", rank=32,
                    saim_width=320, repeats=3, bcm=True, fit_pairs=2, fit_repeats=10, calls=1, project_steps=None)
    else:
        # One step, no guidance: an SD-1.5 UNet call takes ~20 s on two shared cores; the preset's 30 guided
        # steps are projected from the per-step and fixed costs measured here.
        sd15 = dict(backbone="sd15", resolution=256, pairs=1, steps=1, guidance=1.0, sampler="dpmsolver++", rank=32,
                    saim_width=320, repeats=2, bcm=True, fit_pairs=1, fit_repeats=2, calls=1, project_steps=30,
                    project_guided=True)
    # Two of the three toy defect types with the preset's fit steps (None) keep the part near 30 minutes on two
    # cores; eval at 100 steps per method, not 400. bench/alignment.py measures alignment on more pairs.
    quality = dict(backbone="toy", fit_steps=None, count=16, eval_steps=100, repeats=3, seed=0,
                   defects=["stain", "hole"])
    export = dict(samples=10000, repeats=3)
    if quick:
        export.update(samples=200, repeats=1)
        toy.update(pairs=2, steps=4, repeats=2, fit_repeats=3, calls=1)
        sd15.update(resolution=64, repeats=1, fit_repeats=1)
        quality.update(fit_steps=10, count=2, eval_steps=20, repeats=1)
    return {"toy": toy, "sd15": sd15, "quality": quality, "export": export}


def _speed_part(config: dict[str, Any], threads: int) -> dict[str, Any]:
    common = {k: config[k] for k in ("backbone", "pairs", "steps", "guidance", "sampler", "rank", "saim_width", "bcm")}
    if "resolution" in config:
        common["resolution"] = config["resolution"]
    out: dict[str, Any] = {"settings": config}
    speed_args = {**common, "repeats": config["repeats"], "fit_pairs": config["fit_pairs"],
                  "fit_repeats": config["fit_repeats"]}
    timed = run_worker("speed", speed_args, threads=threads)
    for key in ("synth", "unet_step", "fit"):
        out[key] = timed.get(key, {"error": timed.get("error", "missing")})
    out["speed_process"] = {k: timed.get(k) for k in ("process_peak_rss_mb", "wall_s")}
    fit_args = {**common, "pairs": config["fit_pairs"], "repeats": config["fit_repeats"]}
    out["memory"] = {}
    for what in ("synth", "pipeline", "fit", "peft"):
        args = {**(fit_args if what in ("fit", "peft") else common), "what": what, "calls": config["calls"]}
        out["memory"][what] = run_worker("memory", args, threads=threads)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small settings: checks the plumbing in minutes")
    parser.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated subset of {','.join(PARTS)}")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks.md", help="the Markdown report")
    parser.add_argument("--results", type=Path, default=None, help="raw JSON (default: --out with .json)")
    parser.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1), help="torch threads per worker")
    parser.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temporary one)")
    parser.add_argument("--quality-backbone", default="toy",
                        help="backbone of the quality part: toy (default), or a folder, e.g. a pretraining checkpoint")
    parser.add_argument("--quality-fit-steps", type=int, default=None,
                        help="fit steps per adapter in the quality part (default: the preset's)")
    parser.add_argument("--merge", type=Path, nargs="*", default=[],
                        help="other results JSON files whose parts join this report (parts measured separately)")
    parser.add_argument("--render", action="store_true",
                        help="measure nothing: rewrite the report from the results JSON (and --merge files)")
    parser.add_argument("--note", action="append", default=None,
                        help="a sentence for the report's notes (repeatable; replaces the earlier notes)")
    parser.add_argument("--fresh", action="store_true", help="drop earlier results of the parts not run now")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(asctime)s %(message)s")
    parts = [] if args.render else [p.strip() for p in args.parts.split(",") if p.strip()]
    unknown = [p for p in parts if p not in PARTS]
    if unknown:
        parser.error(f"unknown part(s) {unknown}; choose from {PARTS}")
    results_path = args.results or args.out.with_suffix(".json")
    try:
        previous = json.loads(results_path.read_text()) if results_path.is_file() and not args.fresh else {}
    except ValueError:
        previous = {}
    if previous.get("quick") != args.quick:
        previous = {}  # never mix quick and full figures in one report
    for extra in args.merge:
        other = json.loads(extra.read_text())
        if other.get("quick") == args.quick:
            previous.setdefault("parts", {}).update(other.get("parts", {}))
            previous["quick"] = args.quick
    import torch

    gpu = torch.cuda.is_available()
    config = settings(args.quick, gpu)
    results: dict[str, Any] = {"schema_version": 1, "quick": args.quick, "parts": dict(previous.get("parts", {})),
                               "notes": args.note if args.note is not None else previous.get("notes", []),
                               "machine": previous.get("machine")}
    started = time.perf_counter()
    work = args.work or Path(tempfile.mkdtemp(prefix="anogen-bench-"))
    for part in parts:
        t0 = time.perf_counter()
        load_before = [round(x, 2) for x in os.getloadavg()]
        print(f"bench: {part} ...", file=sys.stderr, flush=True)
        if part in ("toy", "sd15"):
            data = _speed_part(config[part], args.threads)
        elif part == "export":
            export_args = {**config["export"], "work": str(work / "export")}
            data = run_worker("export", export_args, threads=1)
            data["settings"] = export_args
        elif part == "threads":
            from bench.threads import run as run_threads

            data = run_threads(args.quick, work / "threads")
        else:
            quality_args = {**config["quality"], "work": str(work / "quality"), "backbone": args.quality_backbone}
            if args.quality_fit_steps:
                quality_args["fit_steps"] = args.quality_fit_steps
            data = run_worker("quality", quality_args, threads=args.threads)
            data["settings"] = quality_args
        data["measured_at"] = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        data["seconds"] = round(time.perf_counter() - t0, 1)
        data["load_average_before"] = load_before
        data["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
        data["machine"] = machine()
        results["parts"][part] = data
        print(f"bench: {part} done in {data['seconds']:.0f} s", file=sys.stderr, flush=True)
        results_path.parent.mkdir(parents=True, exist_ok=True)
        results_path.write_text(json.dumps(results, indent=1))
        args.out.write_text(render(results, threads=args.threads))
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)
    # The header describes the machine of the earlier parts until every one of them has been rerun here (each
    # part also records its own machine).
    if not results.get("machine") or set(previous.get("parts", {})) <= set(parts):
        results["machine"] = machine()
    results["seconds_this_run"] = round(time.perf_counter() - started, 1)
    results_path.write_text(json.dumps(results, indent=1))
    args.out.write_text(render(results, threads=args.threads))
    print(f"bench: wrote {args.out} and {results_path} ({results['seconds_this_run']:.0f} s)", file=sys.stderr)


if __name__ == "__main__":
    main()
