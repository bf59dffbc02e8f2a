"""Mask/defect alignment on the toy world: the measurement behind issue 5's "done when".

For each toy defect type, adapters are fitted with SAIM (`coupling: saim`) and without (`coupling: none`) from
the same preset (`toy/object`, or `toy/texture` with ``--kind texture``) and seed; ``--count`` accepted samples
are generated from each; the IoU between every generated mask and the defect pixels of its *own* whole image (the
toy world's colour rule, ``anogen.toy.defect_pixels``) is averaged, next to the same IoU over shuffled pairs
(chance).

    .venv/bin/python -m bench.alignment --out /tmp/alignment --count 64 [--reuse-runs demo-out/runs]

Writes ``OUT/alignment.json`` and prints a Markdown table. Not part of CI (about 25 minutes on 2 cores; run
``--couplings saim`` and ``--couplings none`` as two processes on one OUT to halve that).
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import numpy as np

from anogen.config import BackboneConfig, ConfigRequest, resolve
from anogen.data import read_category
from anogen.eval.quality import alignment
from anogen.fit import fit
from anogen.io import load_mask, load_rgb
from anogen.model.backbone import load_backbone
from anogen.priors import build_prior
from anogen.records.manifest import read_rows
from anogen.synth import synthesize
from anogen.toy.data import DEFECTS, defect_pixels, make_category

COUPLINGS = ("saim", "none")


def _pairs(folder: Path) -> list[tuple[np.ndarray, np.ndarray]]:
    rows = [r for r in read_rows(folder / "manifest.jsonl") if r.get("accepted")]
    return [(np.asarray(load_rgb(folder / r["image"])), load_mask(folder / r["mask"])) for r in rows]


def run(
    out: Path,
    count: int,
    seed: int,
    reuse_runs: Path | None,
    defects: list[str],
    steps: int | None = None,
    couplings: tuple[str, ...] = COUPLINGS,
    kind: str = "object",
) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    preset = f"toy/{kind}"
    category_dir = make_category(out / "data", kind=kind, seed=seed)
    category = read_category(category_dir)
    build_prior(category, out / "prior")
    backbone = load_backbone(BackboneConfig("toy"))
    results: dict = {"count": count, "seed": seed, "preset": preset, "fit_steps": steps, "defects": {}}
    for coupling in couplings:
        runs = out / f"runs-{coupling}"
        if coupling == "saim" and reuse_runs is not None and not runs.exists():
            shutil.copytree(reuse_runs, runs)
        overrides = {
            "adapter": {"coupling": coupling},
            "train": {"seed": seed, "steps": steps},
            "sample": {"seed": seed, "count": count, "max_attempts": 4 * count},
        }
        config = resolve(preset=preset, overrides=overrides)
        started = time.perf_counter()
        fit(category, config, runs, defects=defects, prior_dir=out / "prior", backbone=backbone, resume=True)
        fit_s = time.perf_counter() - started
        started = time.perf_counter()
        synth = out / f"synth-{coupling}"
        synthesize(runs, synth, ConfigRequest(overrides={"sample": config.sample, "mask": config.mask}))
        synth_s = time.perf_counter() - started
        for defect in defects:
            folder = synth / category.name / defect
            measured = alignment(_pairs(folder), defect, defect_pixels, seed=seed)
            rows = read_rows(folder / "manifest.jsonl")
            measured["attempts"] = len(rows)
            results["defects"].setdefault(defect, {})[coupling] = measured
        results.setdefault("seconds", {})[coupling] = {"fit": round(fit_s, 1), "synth": round(synth_s, 1)}
    # One file per coupling set, so that the two halves can run as two processes on one OUT.
    name = "alignment.json" if tuple(couplings) == COUPLINGS else f"alignment-{'-'.join(couplings)}.json"
    (out / name).write_text(json.dumps(results, indent=2))
    return results


def table(results: dict) -> str:
    lines = [
        "| defect | IoU, SAIM | chance (shuffled), SAIM | IoU, `--coupling none` | chance, none | pairs per side |",
        "| --- | --- | --- | --- | --- | --- |",
    ]

    def fmt(value: float | None) -> str:
        return "-" if value is None else f"{value:.3f}"

    missing = {"iou": None, "chance_iou": None, "n": 0}
    for defect, by in results["defects"].items():
        saim, none = by.get("saim", missing), by.get("none", missing)
        lines.append(
            f"| {defect} | {fmt(saim['iou'])} | {fmt(saim['chance_iou'])} | {fmt(none['iou'])} | "
            f"{fmt(none['chance_iou'])} | {saim['n']} / {none['n']} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--count", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--reuse-runs", type=Path, default=None, help="SAIM adapters already fitted (demo-out/runs)")
    parser.add_argument("--defects", default=",".join(DEFECTS))
    parser.add_argument("--steps", type=int, default=None, help="fit steps per adapter (default: the preset's)")
    parser.add_argument(
        "--couplings", default=",".join(COUPLINGS), help="run only these (two processes can share one OUT)"
    )
    parser.add_argument("--kind", choices=("object", "texture"), default="object", help="the toy category")
    args = parser.parse_args()
    couplings = tuple(args.couplings.split(","))
    results = run(
        args.out, args.count, args.seed, args.reuse_runs, args.defects.split(","), args.steps, couplings, args.kind
    )
    print(table(results))


if __name__ == "__main__":
    main()
