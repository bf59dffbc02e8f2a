"""Verified samples on the toy world: the measurement behind issue 14's "done when" (docs/synth.md).

Per toy kind (object, texture) and data seed, adapters for stain, hole and scratch are fitted with the toy preset
and sampled with verification in mode ``score`` (every attempt that the mask step accepts gets its three scores,
nothing is rejected for them), so one run holds both the unverified set and, by applying thresholds afterwards,
the verified one. A synth run in mode ``reject`` keeps exactly the attempts that pass, in id order (the same
seeds: tests/test_verify_synth.py), so the verified set measured here is what ``--verify reject`` writes, given
enough attempts. Per attempt the bench records the mask area, the scores, and the IoU between the mask and the
defect pixels of its own whole image (the toy colour rule, ``anogen.toy.defect_pixels``), with and without the
mask refinement (``anogen.verify.refine``).

    # the generation (slow: ~10-20 min per kind and seed on one core); two processes can share one OUT
    OMP_NUM_THREADS=1 .venv/bin/python -m bench.verified generate --out /tmp/verified --kind object --seeds 0 1
    # the tables: thresholds chosen on --choose-seed, figures from the other seeds
    .venv/bin/python -m bench.verified analyse --out /tmp/verified --choose-seed 0

``analyse`` also measures the ceiling per defect type: the real defect images of the category and their
ground-truth part canvases (the image times its mask, grey elsewhere, as fit builds them), both passed through
the toy VAE, then the mask step on the part vs the colour rule on the whole image.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

DEFECTS = ("stain", "hole", "scratch")
KINDS = ("object", "texture")


def _cell(out: Path, kind: str, seed: int) -> Path:
    return out / f"{kind}-seed{seed}"


def generate(out: Path, kind: str, seed: int, count: int, defects: tuple[str, ...] = DEFECTS) -> dict[str, Any]:
    """Data, prior, fitted adapters and a score-mode synth output of ``count`` mask-accepted attempts per defect."""
    from anogen.config import BackboneConfig, ConfigRequest, resolve
    from anogen.data import read_category
    from anogen.fit import fit
    from anogen.model.backbone import load_backbone
    from anogen.priors import build_prior
    from anogen.toy.data import make_category

    cell = _cell(out, kind, seed)
    cell.mkdir(parents=True, exist_ok=True)
    category = read_category(make_category(cell / "data", kind=kind, seed=seed))
    build_prior(category, cell / "prior")
    backbone = load_backbone(BackboneConfig("toy"))
    overrides = {
        "train": {"seed": seed},
        "sample": {"seed": seed, "count": count, "max_attempts": 8 * count},
        "verify": {"mode": "score"},
    }
    config = resolve(preset=f"toy/{kind}", overrides=overrides)
    times: dict[str, float] = {}
    started = time.perf_counter()
    fit(category, config, cell / "runs", defects=list(defects), prior_dir=cell / "prior", backbone=backbone,
        resume=True)
    times["fit_s"] = round(time.perf_counter() - started, 1)
    started = time.perf_counter()
    request = ConfigRequest(overrides={"sample": config.sample, "mask": config.mask, "verify": config.verify})
    synthesize_quietly(cell / "runs", cell / "synth", request)
    times["synth_s"] = round(time.perf_counter() - started, 1)
    (cell / "times.json").write_text(json.dumps(times, indent=2))
    return times


def synthesize_quietly(runs: Path, synth: Path, request: Any) -> None:
    from anogen.synth import synthesize

    synthesize(runs, synth, request)


def sampling_variants() -> dict[str, dict[str, Any]]:
    """The sample sections compared side by side with the toy preset's own, on the same adapters and seeds: the
    reference implementation's BCM sampling (``presets/generic/object.yaml``) and the fast recipe's
    (``presets/_recipes/fast.yaml``), read from the files so that they cannot drift from what users get."""
    import yaml

    from anogen.config.presets import presets_dir

    keys = ("sampler", "steps", "guidance", "bcm_uncond_reference", "bcm_reference_every", "bcm_reference_pool")

    def section(path: Path) -> dict[str, Any]:
        sample = yaml.safe_load(path.read_text())["sample"]
        return {k: sample[k] for k in keys if k in sample}

    return {"reference": section(presets_dir() / "generic" / "object.yaml"),
            "fast": section(presets_dir() / "_recipes" / "fast.yaml")}


def generate_sampling(out: Path, kind: str, seed: int, count: int, variant: str) -> dict[str, Any]:
    """A score-mode synth output of the fitted adapters of one cell with another sampling (``synth-<variant>``)."""
    from anogen.config import ConfigRequest, resolve

    cell = _cell(out, kind, seed)
    sample = {**sampling_variants()[variant], "seed": seed, "count": count, "max_attempts": 8 * count}
    config = resolve(preset=f"toy/{kind}", overrides={"sample": sample, "verify": {"mode": "score"}})
    started = time.perf_counter()
    request = ConfigRequest(overrides={"sample": config.sample, "mask": config.mask, "verify": config.verify})
    synthesize_quietly(cell / "runs", cell / f"synth-{variant}", request)
    times = {"synth_s": round(time.perf_counter() - started, 1), "sample": sample}
    (cell / f"times-{variant}.json").write_text(json.dumps(times, indent=2))
    return times


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    from anogen.eval.quality import iou

    value = iou(a, b)
    return 0.0 if value is None else value


def measure_attempts(cell: Path, refinements: list[tuple[float, float]], synth: str = "synth"
                     ) -> dict[str, list[dict[str, Any]]]:
    """Per defect type, one record per attempt: reason, area, scores, IoU (and IoU after each refinement)."""
    from anogen.config import BackboneConfig
    from anogen.io import load_mask, load_rgb
    from anogen.model.backbone import load_backbone
    from anogen.records.manifest import read_rows
    from anogen.toy.data import defect_pixels
    from anogen.verify.cache import load_normal_model
    from anogen.verify.checks import alignment_score
    from anogen.verify.refine import refine_mask

    backbone = load_backbone(BackboneConfig("toy"))
    out: dict[str, list[dict[str, Any]]] = {}
    for manifest in sorted((cell / synth).glob("*/*/manifest.jsonl")):
        folder = manifest.parent
        model = load_normal_model(folder.parent / ".verify", backbone)
        records = []
        for row in read_rows(manifest):
            record: dict[str, Any] = {"id": row["id"], "reason": row.get("reason"), "area": row.get("mask_area")}
            if row.get("verify") is not None:
                record.update({f"score_{k}": v for k, v in row["verify"].items()})
            if row.get("reason") is None:
                image = np.asarray(load_rgb(folder / row["image"]))
                mask = load_mask(folder / row["mask"])
                found = defect_pixels(image, folder.name)
                record["iou"] = _iou(mask, found)
                amap = model.anomaly_map(image)
                band = round(model.config.alignment_band * model.stride)
                # alignment at other floors: the floor says how anomalous a mask pixel must be to count at all.
                for floor in FLOOR_GRID:
                    record[f"alignment_{floor:g}"] = alignment_score(amap, mask, floor=floor, band=band)
                for width_cells, fraction in refinements:
                    width = round(width_cells * model.stride)
                    refined = refine_mask(mask, amap, width=width, fraction=fraction,
                                          floor=model.config.alignment_floor)
                    record[f"iou_refined_{width_cells:g}_{fraction:g}"] = _iou(refined, found)
            records.append(record)
        out[folder.name] = records
    return out


def ceilings(cell: Path, count: int = 30) -> dict[str, float]:
    """Per defect type, the mean IoU of the mask step on round-tripped ground-truth parts vs the colour rule."""
    from anogen.config import BackboneConfig, resolve
    from anogen.masks import make_mask
    from anogen.model.backbone import load_backbone
    from anogen.toy.data import defect_image, defect_pixels
    from anogen.verify.features import round_trip

    kind, seed = cell.name.split("-seed")
    mask_config = resolve(preset=f"toy/{kind}").mask
    vae = load_backbone(BackboneConfig("toy")).vae
    result = {}
    for defect in DEFECTS:
        wholes, parts = [], []
        for index in range(count):
            whole, mask, _ = defect_image(kind, defect, int(seed), index, 64)
            wholes.append(whole)
            parts.append(np.where(mask[..., None], whole, 128).astype(np.uint8))
        wholes_rt, parts_rt = round_trip(vae, wholes), round_trip(vae, parts)
        values = []
        for whole, part in zip(wholes_rt, parts_rt, strict=True):
            made = make_mask(part, mask_config).mask > 0
            values.append(_iou(made, defect_pixels(whole, defect)))
        result[defect] = float(np.mean(values))
    return result


def measure(out: Path, refinements: list[tuple[float, float]]) -> dict[str, Any]:
    """Attempt records and ceilings of every generated cell (``OUT/<cell>/attempts.json``), and of its other
    samplings (``attempts-<variant>.json``, without refinements)."""
    measured = {}
    for cell in sorted(p for p in out.iterdir() if (p / "times.json").is_file()):
        target = cell / "attempts.json"
        if not target.is_file():
            data = {"attempts": measure_attempts(cell, refinements), "ceilings": ceilings(cell),
                    "times": json.loads((cell / "times.json").read_text())}
            target.write_text(json.dumps(data))
        measured[cell.name] = json.loads(target.read_text())
        for times in sorted(cell.glob("times-*.json")):
            variant = times.stem.removeprefix("times-")
            target = cell / f"attempts-{variant}.json"
            if not target.is_file():
                data = {"attempts": measure_attempts(cell, [], f"synth-{variant}"),
                        "times": json.loads(times.read_text())}
                target.write_text(json.dumps(data))
            measured[cell.name].setdefault("variants", {})[variant] = json.loads(target.read_text())
    return measured


def verdicts(records: list[dict[str, Any]], thresholds: dict[str, float]) -> list[bool]:
    """Whether each attempt would be accepted in mode ``reject`` with these thresholds (mask step first)."""
    kept = []
    for r in records:
        ok = r["reason"] is None
        if ok:
            alignment = r.get(f"alignment_{thresholds.get('alignment_floor', 1.0):g}")
            ok = alignment is not None and alignment >= thresholds["alignment_min"]
            ok = ok and r["score_background"] <= thresholds["background_max"]
            copy = r.get("score_copy")
            ok = ok and (copy is None or copy >= thresholds["copy_min"])
        kept.append(ok)
    return kept


def _first(records: list[dict[str, Any]], kept: list[bool], count: int) -> tuple[list[dict[str, Any]], int]:
    """The first ``count`` kept records in id order, and the attempts it took to reach them."""
    chosen, attempts = [], 0
    for r, ok in zip(records, kept, strict=True):
        attempts += 1
        if ok:
            chosen.append(r)
            if len(chosen) == count:
                break
    return chosen, attempts


def cell_figures(records: list[dict[str, Any]], thresholds: dict[str, float], iou_key: str = "iou",
                 count: int = 64, spearman: bool = True) -> dict[str, Any]:
    """The issue's figures for one defect type: unverified vs verified (the first ``count`` accepted of each)."""
    from scipy.stats import spearmanr

    unverified_kept = [r["reason"] is None for r in records]
    verified_kept = verdicts(records, thresholds)
    # Means over every accepted attempt (the accepted set of a run with a large --count); attempts to the
    # count-th accepted give the time per accepted sample.
    plain = [r for r, ok in zip(records, unverified_kept, strict=True) if ok]
    checked = [r for r, ok in zip(records, verified_kept, strict=True) if ok]
    plain_attempts = _first(records, unverified_kept, count)[1] if len(plain) >= count else None
    checked_attempts = _first(records, verified_kept, count)[1] if len(checked) >= count else None
    judged = [r for r in records if r["reason"] is None]
    # Attempts the mask step accepted whose mask misses its defect: verification's own catch rate.
    low = [ok for r, ok in zip(records, verified_kept, strict=True) if r["reason"] is None and r[iou_key] < 0.1]
    low_rejected = sum(1 for ok in low if not ok)
    floor_key = f"alignment_{thresholds.get('alignment_floor', 1.0):g}"
    pairs = [(r[floor_key], r[iou_key]) for r in judged if r.get(floor_key) is not None]
    rho = (spearmanr([a for a, _ in pairs], [b for _, b in pairs]).statistic
           if spearman and len(pairs) > 2 else None)
    return {
        "unverified_iou": float(np.mean([r[iou_key] for r in plain])) if plain else None,
        "verified_iou": float(np.mean([r[iou_key] for r in checked])) if checked else None,
        "verified_n": len(checked),
        "unverified_n": len(plain),
        "acceptance": sum(verified_kept) / len(records),
        "unverified_acceptance": sum(unverified_kept) / len(records),
        f"attempts_to_{count}_unverified": plain_attempts,
        f"attempts_to_{count}_verified": checked_attempts,
        "median_area_unverified": float(np.median([r["area"] for r in plain])) if plain else None,
        "median_area_verified": float(np.median([r["area"] for r in checked])) if checked else None,
        "accepted_low_share": (sum(1 for r in checked if r[iou_key] < 0.1) / len(checked)) if checked else None,
        "low_rejected_share": (low_rejected / len(low)) if low else None,
        "low_n": len(low),
        "spearman": None if rho is None else float(rho),
    }




ALIGNMENT_GRID = tuple(round(0.5 + 0.05 * k, 2) for k in range(10))
FLOOR_GRID = (1.0, 1.5, 2.0, 2.5, 3.0)
# Ties go to the first value of each grid: the looser alignment, but the stricter background_max and copy_min,
# since those checks guard against damaged backgrounds and memorisation, which IoU cannot see.
BACKGROUND_GRID = (1.0, 1.2, 1.5, 2.0, 2.5, 3.0, 4.0, 6.0, float("inf"))
COPY_GRID = (1.5, 0.0)
REFINEMENTS = [(0.5, 0.3), (0.5, 0.5), (1.0, 0.3), (1.0, 0.5)]


def choose_thresholds(cells: dict[str, list[dict[str, Any]]], ceilings: dict[str, float],
                      min_acceptance: float = 0.4, area_tolerance: float = 0.2) -> dict[str, Any]:
    """The thresholds that give the highest mean verified IoU over the cells (defect -> attempts) that the
    colour rule can measure (ceiling at least 0.4; all cells when none is), while every cell keeps at least
    ``min_acceptance`` of its attempts and its median mask area within ``area_tolerance`` of the unverified
    set's (margins inside the issue's 1/3 and 25 %, since the figures come from other seeds)."""
    scored = [d for d in cells if ceilings.get(d, 0.0) >= 0.4] or list(cells)
    best: dict[str, Any] | None = None
    grid = [(a, f, b, c) for a in ALIGNMENT_GRID for f in FLOOR_GRID for b in BACKGROUND_GRID for c in COPY_GRID]
    for alignment_min, floor, background_max, copy_min in grid:
        thresholds = {"alignment_min": alignment_min, "alignment_floor": floor,
                      "background_max": background_max, "copy_min": copy_min}
        figures = {d: cell_figures(records, thresholds, spearman=False) for d, records in cells.items()}
        feasible = all(
            f["acceptance"] >= min_acceptance and f["verified_n"] > 0
            and abs(f["median_area_verified"] / f["median_area_unverified"] - 1) <= area_tolerance
            for f in figures.values()
        )
        if not feasible:
            continue
        value = float(np.mean([figures[d]["verified_iou"] for d in scored]))
        # Ties go to the first visited (the grids' order).
        if best is None or value > best["mean_verified_iou"] + 1e-9:
            best = {"thresholds": thresholds, "mean_verified_iou": value, "cells_scored": scored}
    if best is None:
        raise SystemExit("no thresholds on the grid keep the acceptance and area constraints")
    return best


def _fmt(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def analyse(out: Path, choose_seed: int) -> dict[str, Any]:
    measured = measure(out, REFINEMENTS)
    report: dict[str, Any] = {"choose_seed": choose_seed, "kinds": {}}
    for kind in KINDS:
        chooser = measured.get(f"{kind}-seed{choose_seed}")
        if chooser is None:
            continue
        chosen = choose_thresholds(chooser["attempts"], chooser["ceilings"])
        thresholds = chosen["thresholds"]
        gains = {}
        for width, fraction in REFINEMENTS:
            key = f"iou_refined_{width:g}_{fraction:g}"
            gains[key] = float(np.mean([
                cell_figures(records, thresholds, key)["verified_iou"]
                - cell_figures(records, thresholds)["verified_iou"]
                for records in chooser["attempts"].values()
            ]))
        refinement = max(gains, key=gains.get)
        per_seed = {}
        for name, data in measured.items():
            if not name.startswith(f"{kind}-seed"):
                continue
            per_seed[name] = {
                defect: {
                    "figures": cell_figures(records, thresholds),
                    "refined": cell_figures(records, thresholds, refinement),
                    "ceiling": data["ceilings"][defect],
                    "seconds_per_attempt": data["times"]["synth_s"] / sum(len(v) for v in data["attempts"].values()),
                }
                for defect, records in data["attempts"].items()
            }
        samplings = {
            name: {variant: {defect: cell_figures(records, thresholds) for defect, records in v["attempts"].items()}
                   | {"seconds_per_attempt": v["times"]["synth_s"] / sum(len(r) for r in v["attempts"].values())}
                   for variant, v in data.get("variants", {}).items()}
            for name, data in measured.items() if name.startswith(f"{kind}-seed") and data.get("variants")
        }
        report["kinds"][kind] = {"chosen": chosen, "refinement_gains_on_choose_seed": gains,
                                 "refinement": refinement, "seeds": per_seed, "samplings": samplings}
    (out / "verified.json").write_text(json.dumps(report, indent=2))
    return report


def table(report: dict[str, Any]) -> str:
    lines = [
        "| kind, seed | defect | ceiling | IoU unverified | IoU verified | target | acceptance | median area v/u "
        "| accepted IoU<0.1 | IoU<0.1 rejected | Spearman | IoU verified, refined | accepted |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for kind, data in report["kinds"].items():
        for name, cells in data["seeds"].items():
            for defect, cell in cells.items():
                f, r = cell["figures"], cell["refined"]
                target = min(0.75, cell["ceiling"] - 0.05)
                if f["unverified_iou"] is not None:
                    target = max(target, f["unverified_iou"] + 0.10)
                ratio = (f["median_area_verified"] / f["median_area_unverified"]
                         if f["median_area_verified"] and f["median_area_unverified"] else None)
                lines.append(
                    f"| {name} | {defect} | {_fmt(cell['ceiling'])} | {_fmt(f['unverified_iou'])} | "
                    f"{_fmt(f['verified_iou'])} | {_fmt(target)} | {_fmt(f['acceptance'], 2)} | {_fmt(ratio, 2)} | "
                    f"{_fmt(f['accepted_low_share'], 3)} | {_fmt(f['low_rejected_share'], 2)} (of {f['low_n']}) | "
                    f"{_fmt(f['spearman'], 2)} | {_fmt(r['verified_iou'])} | {f['verified_n']} / {f['unverified_n']} |"
                )
        lines.append(
            f"\n{kind}: thresholds {data['chosen']['thresholds']} (chosen on seed {report['choose_seed']}); "
            f"refinement {data['refinement']} (gains on that seed {data['refinement_gains_on_choose_seed']})\n"
        )
    lines += [
        "",
        "| kind, seed | sampling | s / attempt | " + " | ".join(
            f"{d}: IoU unverified / verified, acceptance" for d in DEFECTS) + " |",
        "| --- | --- | --- | " + " | ".join("---" for _ in DEFECTS) + " |",
    ]
    for data in report["kinds"].values():
        for name, variants in data.get("samplings", {}).items():
            toy = {d: c["figures"] for d, c in data["seeds"][name].items()}
            toy_s = next(iter(data["seeds"][name].values()))["seconds_per_attempt"]
            for variant, cells in [("toy preset", {**toy, "seconds_per_attempt": toy_s}), *variants.items()]:
                parts = [
                    f"{_fmt(cells[d]['unverified_iou'])} / {_fmt(cells[d]['verified_iou'])}, "
                    f"{_fmt(cells[d]['acceptance'], 2)}" if d in cells else "-"
                    for d in DEFECTS
                ]
                lines.append(f"| {name} | {variant} | {_fmt(cells['seconds_per_attempt'], 2)} | "
                             + " | ".join(parts) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    gen = sub.add_parser("generate", help="fit and sample (slow)")
    gen.add_argument("--out", type=Path, required=True)
    gen.add_argument("--kind", choices=KINDS, default="object")
    gen.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    gen.add_argument("--count", type=int, default=192, help="mask-accepted attempts per defect type")
    gen.add_argument("--defects", default=",".join(DEFECTS))
    gen.add_argument("--sampling", choices=("reference", "fast"), default=None,
                     help="only sample the fitted adapters again with this sampling (synth-<name>)")
    ana = sub.add_parser("analyse", help="measure the attempts and print the tables")
    ana.add_argument("--out", type=Path, required=True)
    ana.add_argument("--choose-seed", type=int, default=0)
    args = parser.parse_args()
    if args.command == "analyse":
        print(table(analyse(args.out, args.choose_seed)))
    elif args.command == "generate":
        for seed in args.seeds:
            if args.sampling:
                print(args.kind, seed, generate_sampling(args.out, args.kind, seed, args.count, args.sampling))
            else:
                print(args.kind, seed, generate(args.out, args.kind, seed, args.count,
                                                tuple(args.defects.split(","))), flush=True)


if __name__ == "__main__":
    main()
