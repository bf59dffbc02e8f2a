"""Quality on the toy data set, and export speed: the real pipeline (toy data -> prior -> fit -> synth) per coupling.

For each coupling (SAIM, ``none``) the same preset (``toy/object``), seeds, steps and counts are used; alignment is
:func:`anogen.eval.quality.alignment` (IoU of each generated mask with the toy defect-colour pixels of its own whole
image, and the chance level of shuffled pairs). The downstream table is ``anogen eval`` (a subprocess, as a user
runs it) on the SAIM samples, against Perlin, cut-paste and the real shots alone. Export is timed against copying
exactly the files it wrote.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.common import ROOT, interleaved

logger = logging.getLogger("bench")


def _export_vs_copy(synth: Path, data: Path, work: Path, repeats: int) -> dict[str, Any]:
    from anogen.export import ExportConfig, export

    first = work / "export-0"
    shutil.rmtree(first, ignore_errors=True)
    export([synth], ExportConfig(format="mvtec", out=first, data=data))
    files = sorted(p for p in first.rglob("*") if p.is_file())
    total = sum(p.stat().st_size for p in files)
    counter = {"export": 0, "copy": 0}

    def run_export() -> None:
        counter["export"] += 1
        out = work / f"export-{counter['export']}"
        shutil.rmtree(out, ignore_errors=True)
        export([synth], ExportConfig(format="mvtec", out=out, data=data))

    def run_copy() -> None:
        counter["copy"] += 1
        out = work / f"copy-{counter['copy']}"
        shutil.rmtree(out, ignore_errors=True)
        for path in files:
            target = out / path.relative_to(first)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, target)

    timings = interleaved({"export": run_export, "plain_copy": run_copy}, repeats, warmup=1)
    for i in range(1, repeats + 2):
        shutil.rmtree(work / f"export-{i}", ignore_errors=True)
        shutil.rmtree(work / f"copy-{i}", ignore_errors=True)
    return {"files": len(files), "bytes": total, "timings": timings}


def _eval(data: Path, synth: Path, out_file: Path, steps: int, seed: int) -> dict[str, Any]:
    anogen = Path(sys.executable).with_name("anogen")
    cmd = [str(anogen) if anogen.exists() else sys.executable, *([] if anogen.exists() else ["-m", "anogen"]),
           "eval", "--data", str(data), "--synth", str(synth), "--baseline", "perlin", "--baseline", "cutpaste",
           "--baseline", "none", "--steps", str(steps), "--seed", str(seed), "--device", "cpu", "--out",
           str(out_file), "--quiet"]
    started = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=dict(os.environ))
    if proc.returncode != 0:
        return {"error": f"anogen eval failed (exit {proc.returncode}): {(proc.stderr or proc.stdout)[-2000:]}",
                "command": " ".join(cmd)}
    result = json.loads(out_file.read_text())
    return {"command": "anogen " + " ".join(cmd[1 if anogen.exists() else 3:]),
            "seconds": round(time.perf_counter() - started, 1),
            "methods": {k: {"metrics": v["metrics"], "train": v["train"]} for k, v in result["methods"].items()},
            "test": result.get("test")}


def task_quality(args: dict[str, Any]) -> dict[str, Any]:
    """Fit + synth per coupling on toy data; alignment IoU per defect; the eval table; export vs copy."""
    from anogen.config import BackboneConfig, ConfigRequest, resolve
    from anogen.data import read_category
    from anogen.errors import InputError
    from anogen.eval.protocol import read_synth
    from anogen.eval.quality import measure_quality, rejections
    from anogen.fit import fit
    from anogen.model.backbone import load_backbone
    from anogen.priors import build_prior
    from anogen.records.manifest import read_all_rows
    from anogen.synth import synthesize
    from anogen.toy import defect_pixels, make_category
    from bench.common import random_toy_backbone

    work = Path(args["work"])
    work.mkdir(parents=True, exist_ok=True)
    seed = int(args.get("seed", 0))
    timings: dict[str, float] = {}
    started = time.perf_counter()
    folder = make_category(work / "data", kind="object", seed=seed)
    category = read_category(folder)
    timings["data_s"] = time.perf_counter() - started
    t0 = time.perf_counter()
    build_prior(category, work / "prior")
    timings["prior_s"] = time.perf_counter() - t0
    logger.info("bench quality: data + prior in %.1f s", time.perf_counter() - started)
    source = args.get("backbone", "toy")
    try:
        backbone = load_backbone(BackboneConfig(source))
        backbone_note = f"{source} (shipped weights)" if source == "toy" else source
    except Exception as exc:  # the toy asset may not have landed: run the plumbing on random weights, say so
        logger.warning("bench quality: %s; using the toy architecture with random weights", exc)
        backbone = random_toy_backbone()
        backbone_note = "toy architecture, RANDOM weights (the toy asset was missing): figures are not meaningful"
        source = None
    result: dict[str, Any] = {"backbone": backbone_note, "preset": "toy/object", "couplings": {},
                              "defects": args.get("defects") or "all"}
    for coupling in args.get("couplings", ["saim", "none"]):
        overrides: dict[str, dict[str, Any]] = {
            "adapter": {"coupling": coupling},
            "train": {"steps": args.get("fit_steps"), "seed": seed},
            "sample": {"count": args.get("count"), "seed": seed},
        }
        if source is not None:
            overrides["backbone"] = {"id": source}
        resolved = resolve(preset="toy/object", overrides=overrides)
        runs, synth = work / f"runs-{coupling}", work / f"synth-{coupling}"
        shutil.rmtree(runs, ignore_errors=True)
        shutil.rmtree(synth, ignore_errors=True)
        t0 = time.perf_counter()
        fit(category, resolved, runs, defects=args.get("defects"), prior_dir=work / "prior", backbone=backbone)
        fit_s = time.perf_counter() - t0
        logger.info("bench quality: fit %s in %.1f s", coupling, fit_s)
        entry: dict[str, Any] = {"fit_s": round(fit_s, 1), "fit_steps": resolved.train.steps,
                                 "count": resolved.sample.count, "sample_steps": resolved.sample.steps}
        if source is None:
            # synth reloads the backbone by the name the adapter records; a random backbone has none to reload.
            entry["error"] = "synth skipped: the random stand-in backbone cannot be reloaded by name"
            result["couplings"][coupling] = entry
            continue
        t0 = time.perf_counter()
        summary = synthesize(runs, synth, ConfigRequest(overrides={"sample": resolved.sample, "mask": resolved.mask}))
        entry["synth_s"] = round(time.perf_counter() - t0, 1)
        entry["synth"] = summary.to_dict()
        try:
            quality = measure_quality(read_synth(synth), {}, defect_pixels=defect_pixels, seed=seed)
        except InputError as exc:  # e.g. every attempt rejected
            entry["error"] = str(exc)
            entry["rejections"] = {
                f.parent.name: rejections(list(read_all_rows(f.parent).values()))
                for f in sorted(synth.glob("*/*/manifest.jsonl"))
            }
        else:
            entry["alignment"] = {d: q["alignment"] for d, q in quality.items()}
            entry["rejections"] = {d: q["rejections"] for d, q in quality.items()}
            entry["diversity"] = {d: q["diversity"] for d, q in quality.items()}
        result["couplings"][coupling] = entry
    if "alignment" in result["couplings"].get("saim", {}):
        saim = work / "synth-saim"
        result["eval"] = _eval(folder, saim, work / "eval.json", int(args.get("eval_steps", 400)), seed)
        result["export"] = _export_vs_copy(saim, folder, work, int(args.get("repeats", 3)))
    result["timings"] = {k: round(v, 1) for k, v in timings.items()}
    return result
