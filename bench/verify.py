"""The normal model and the sample checks of ``anogen.verify`` on the toy world: the measurements of docs/verify.md.

Per toy data seed (the tests use seed 0; measure on others), for the toy object or texture:

- build time of the normal model from ``train/good`` (60 normals at 64 px) and scoring time per image;
- pixel AUROC of the anomaly map against the ground truth over ``test/good`` and the real defect images (the
  queries passed through the VAE as generated images are, and as they are), per defect type too; a pixel
  nearest-neighbour baseline (RGB, toy only);
- the checks on constructed cases: a real defect image with its own mask, with its mask moved, a normal image with
  a defect's mask (no visible defect), a patch of the object or texture pasted outside the mask, a training shot
  after a VAE round trip and a 2-px shift, and other defect images against the shots; the Spearman correlation of
  ``alignment`` with the IoU of shifted masks;
- optionally (``--generation``), side by side in one process: the toy backbone's generation time per pair
  (``sample_pairs``, 8 pairs, 20 dpmsolver++ steps, guidance 2.5, as ``bench.speed``) against scoring a pair's
  whole image (anomaly map + checks).

- optionally (``--sd15``): build and scoring time with SD-1.5's VAE architecture at 512 px on the CPU.

    OMP_NUM_THREADS=1 .venv/bin/python -m bench.verify --kind object --seeds 1 2 3 [--generation] [--sd15] [--out F]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np

from anogen.toy.data import DEFECTS, defect_image, normal_image
from anogen.verify import VerifyConfig, alignment_score, background_score, reject_reason, score_sample
from anogen.verify.checks import copy_score

SIZE = 64


def toy_cases(kind: str, seed: int, n_train: int = 60, n_good: int = 12, n_defect: int = 10) -> dict[str, Any]:
    """The toy category's images in memory (the same pixels ``anogen toy make`` writes)."""
    normals = [normal_image(kind, seed, i, SIZE, split="train")[0] for i in range(n_train)]
    good = [normal_image(kind, seed, i, SIZE, split="test-good")[0] for i in range(n_good)]
    defects = {d: [defect_image(kind, d, seed, i, SIZE) for i in range(n_defect)] for d in DEFECTS}
    return {"normals": normals, "good": good, "defects": defects}


def paste_patch(image: np.ndarray, mask: np.ndarray, obj: np.ndarray | None, seed: int, side: int = 14) -> np.ndarray:
    """A patch of the object (or of the texture) pasted at a place away from the mask (and off the object)."""
    from scipy.ndimage import distance_transform_edt

    rng = np.random.default_rng(seed)
    size = image.shape[0]
    out = image.copy()
    if obj is not None:
        ys, xs = np.nonzero(distance_transform_edt(obj) > side // 2 + 1)
        k = rng.integers(len(ys))
        sy, sx = ys[k] - side // 2, xs[k] - side // 2
        forbidden = obj | mask
    else:
        sy, sx = rng.integers(0, size - side, 2)
        forbidden = mask
    far = distance_transform_edt(~forbidden) > side * 0.75
    ys, xs = np.nonzero(far[: size - side, : size - side] if far.any() else ~forbidden[: size - side, : size - side])
    order = rng.permutation(len(ys))
    for k in order:
        ty, tx = ys[k], xs[k]
        if not (forbidden[ty : ty + side, tx : tx + side]).any():
            out[ty : ty + side, tx : tx + side] = image[sy : sy + side, sx : sx + side]
            return out
    raise RuntimeError("no room to paste a patch outside the mask")


def shift(image: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """Shift by whole pixels, edges replicated (no wrap-around)."""
    size = image.shape[0]
    ys = np.clip(np.arange(size) - dy, 0, size - 1)
    xs = np.clip(np.arange(size) - dx, 0, size - 1)
    return image[ys][:, xs]


def _auroc(labels: np.ndarray, scores: np.ndarray) -> float:
    from anogen.eval.metrics import roc_auc

    return roc_auc(labels.ravel(), scores.ravel())


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = (a | b).sum()
    return float((a & b).sum() / union) if union else 1.0


def pixel_baseline(normals: list[np.ndarray], queries: list[np.ndarray], seed: int, bank: int = 20000) -> np.ndarray:
    """Nearest-neighbour distance of each query pixel's RGB to a random subset of the normals' pixels."""
    import torch

    pixels = np.concatenate([n.reshape(-1, 3) for n in normals]).astype(np.float32)
    pick = np.random.default_rng(seed).choice(len(pixels), size=min(bank, len(pixels)), replace=False)
    ref = torch.from_numpy(pixels[pick])
    out = []
    for q in queries:
        d = torch.cdist(torch.from_numpy(q.reshape(-1, 3).astype(np.float32)), ref).min(dim=1).values
        out.append(d.numpy().reshape(q.shape[:2]))
    return np.stack(out)


def measure_seed(backbone: Any, kind: str, seed: int, config: VerifyConfig) -> dict[str, Any]:
    from scipy.stats import spearmanr

    from anogen.verify.features import round_trip
    from anogen.verify.normal import build_normal_model
    from anogen.verify.shots import build_shot_bank

    cases = toy_cases(kind, seed)
    t0 = time.perf_counter()
    model = build_normal_model(backbone, cases["normals"], config)
    build_s = time.perf_counter() - t0
    images = cases["good"] + [im for d in DEFECTS for im, _, _ in cases["defects"][d]]
    truth = np.stack([np.zeros((SIZE, SIZE), bool)] * len(cases["good"])
                     + [m for d in DEFECTS for _, m, _ in cases["defects"][d]])
    trips = round_trip(backbone.vae, images, config.batch_size)
    t0 = time.perf_counter()
    maps_rt = model.anomaly_maps(trips)
    score_s = (time.perf_counter() - t0) / len(trips)
    maps_raw = model.anomaly_maps(images)
    n_good = len(cases["good"])
    result: dict[str, Any] = {
        "seed": seed, "kind": kind, "build_s": build_s, "score_s_per_image": score_s,
        "bank_size": int(model.bank.shape[0]), "scale": model.scale,
        "auroc_round_trip": _auroc(truth, maps_rt), "auroc_as_is": _auroc(truth, maps_raw),
        "auroc_pixel_baseline": _auroc(truth, pixel_baseline(round_trip(backbone.vae, cases["normals"]), trips, seed)),
        "per_defect": {},
    }
    for k, d in enumerate(DEFECTS):
        sl = slice(n_good + 10 * k, n_good + 10 * (k + 1))
        sel = np.r_[np.arange(n_good), np.arange(sl.start, sl.stop)]
        result["per_defect"][d] = _auroc(truth[sel], maps_rt[sel])
    band, margin = round(config.alignment_band * model.stride), round(config.background_margin * model.stride)
    checks: dict[str, list[float]] = {"correct_alignment": [], "correct_background": [], "moved_alignment": [],
                                      "absent_alignment": [], "pasted_background": [], "plain_alignment": [],
                                      "plain_moved_alignment": [], "copy_shot": [], "copy_other": []}
    ious, aligns = [], []
    for k, d in enumerate(DEFECTS):
        for i, (_image, mask, obj) in enumerate(cases["defects"][d]):
            amap = maps_rt[n_good + 10 * k + i]
            moved = np.roll(mask, (SIZE // 2, SIZE // 3), axis=(0, 1))
            checks["correct_alignment"].append(alignment_score(amap, mask, floor=config.alignment_floor, band=band))
            checks["correct_background"].append(background_score(amap, mask, margin=margin))
            checks["moved_alignment"].append(alignment_score(amap, moved, floor=config.alignment_floor, band=band))
            checks["plain_alignment"].append(alignment_score(amap, mask, floor=0.0, band=band))
            checks["plain_moved_alignment"].append(alignment_score(amap, moved, floor=0.0, band=band))
            good_map = maps_rt[i % n_good]
            checks["absent_alignment"].append(alignment_score(good_map, mask, floor=config.alignment_floor, band=band))
            pasted = paste_patch(trips[n_good + 10 * k + i], mask, obj, seed=i)
            checks["pasted_background"].append(background_score(model.anomaly_map(pasted), mask, margin=margin))
            rng = np.random.default_rng(seed * 100 + i)
            for offset in (0, 1, 2, 3, 4, 6, 8, 12):
                angle = rng.uniform(0, 2 * np.pi)
                dy, dx = int(round(offset * np.sin(angle))), int(round(offset * np.cos(angle)))
                shifted = np.roll(mask, (dy, dx), axis=(0, 1))
                ious.append(_iou(shifted, mask))
                aligns.append(alignment_score(amap, shifted, floor=config.alignment_floor, band=band))
        shots = [im for im, _, _ in cases["defects"][d][:3]]
        bank = build_shot_bank(backbone, shots, config)
        for shot_trip in round_trip(backbone.vae, shots):
            checks["copy_shot"].append(copy_score(shift(shot_trip, 2, -2), bank))
        for image, _, _ in cases["defects"][d][3:]:
            checks["copy_other"].append(copy_score(round_trip(backbone.vae, [image])[0], bank))
    aligns_arr = np.nan_to_num(np.asarray(aligns), nan=0.0)
    result["alignment_iou_spearman"] = float(spearmanr(aligns_arr, ious).statistic)
    result["checks"] = {k: {"min": float(np.nanmin(v)), "median": float(np.nanmedian(v)), "max": float(np.nanmax(v))}
                        for k, v in checks.items()}
    c = {k: np.asarray(v, dtype=np.float64) for k, v in checks.items()}
    result["rates"] = {
        "correct_pass": float(np.mean((c["correct_alignment"] >= config.alignment_min)
                                      & (c["correct_background"] <= config.background_max))),
        "moved_misaligned": float(np.mean(c["moved_alignment"] < config.alignment_min)),
        "absent_misaligned": float(np.mean(c["absent_alignment"] < config.alignment_min)),
        "pasted_background": float(np.mean(c["pasted_background"] > config.background_max)),
        "shot_copy": float(np.mean(c["copy_shot"] < config.copy_min)),
        "other_not_copy": float(np.mean(c["copy_other"] >= config.copy_min)),
    }
    return result


def measure_generation(backbone: Any, config: VerifyConfig, kind: str, pairs: int = 8, rounds: int = 2) -> dict:
    """Generation per pair (toy, bench.speed's settings) and scoring per whole image, interleaved in one process."""
    from anogen.config import AdapterConfig, SampleConfig
    from anogen.model.dual import DualAdapter
    from anogen.records import AdapterRecord
    from anogen.synth import sample_pairs
    from anogen.verify.normal import build_normal_model
    from bench.speed import _nonzero

    cases = toy_cases(kind, 0, n_train=60)
    model = build_normal_model(backbone, cases["normals"], config)
    adapter = DualAdapter.from_backbone(backbone, AdapterConfig(rank=8, alpha=8.0), seed=0)
    _nonzero(adapter)
    sc = SampleConfig(sampler="dpmsolver++", steps=20, guidance=2.5, batch_size=pairs, count=pairs)
    gen, score = [], []
    for r in range(rounds):
        t0 = time.perf_counter()
        ids = list(range(r * pairs, (r + 1) * pairs))
        images, parts = sample_pairs(backbone, adapter, AdapterRecord.from_dict({}), ids, sc)
        gen.append((time.perf_counter() - t0) / pairs)
        masks = [np.asarray(p).astype(np.int16).__sub__(128).__abs__().max(axis=-1) > 30 for p in parts]
        t0 = time.perf_counter()
        maps = model.anomaly_maps(list(images))
        for image, mask, amap in zip(images, masks, maps, strict=True):
            reject_reason(score_sample(image, mask, amap, model), config)
        score.append((time.perf_counter() - t0) / pairs)
    return {"generation_s_per_pair": statistics.median(gen), "scoring_s_per_pair": statistics.median(score),
            "ratio": statistics.median(s / g for s, g in zip(score, gen, strict=True)), "pairs": pairs,
            "rounds": rounds}


def measure_sd15_cpu(normals: int = 3, queries: int = 1) -> dict[str, Any]:
    """Cost at SD-1.5 size: its VAE architecture (cheap random weights, bench.common) at 512 px on this machine.

    Only the time means something here (random weights), and few images are used: a CPU at this size is slow.
    """
    from PIL import Image

    from anogen.verify.normal import build_normal_model
    from bench.common import sd15_backbone

    backbone = sd15_backbone(512)
    toy = toy_cases("object", 0, n_train=normals, n_good=queries, n_defect=0)

    def up(image: np.ndarray) -> np.ndarray:
        return np.asarray(Image.fromarray(image).resize((512, 512), Image.BICUBIC))

    config = VerifyConfig(batch_size=1, holdout=0.34)  # 2 in the bank, 1 held out
    t0 = time.perf_counter()
    model = build_normal_model(backbone, [up(i) for i in toy["normals"]], config)
    build = time.perf_counter() - t0
    t0 = time.perf_counter()
    model.anomaly_maps([up(i) for i in toy["good"]])
    score = (time.perf_counter() - t0) / queries
    return {"normals": normals, "build_s": build, "score_s_per_image": score, "bank_size": int(model.bank.shape[0]),
            "feature_dim": int(model.bank.shape[1]), "stride": model.stride}


def main() -> None:
    import torch

    from anogen.config import BackboneConfig
    from anogen.model.backbone import load_backbone

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kind", default="object", choices=["object", "texture"])
    parser.add_argument("--seeds", type=int, nargs="*", default=[1, 2, 3])
    parser.add_argument("--generation", action="store_true", help="also time generation vs scoring")
    parser.add_argument("--sd15", action="store_true", help="also time SD-1.5's VAE at 512 px (random weights)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    backbone = load_backbone(BackboneConfig("toy"))
    config = VerifyConfig(mode="reject")
    load = os.getloadavg()
    results: dict[str, Any] = {"config": config.to_dict(), "load_before": load, "seeds": []}
    for seed in args.seeds:
        results["seeds"].append(measure_seed(backbone, args.kind, seed, config))
        print(json.dumps(results["seeds"][-1], indent=1), flush=True)
    if args.generation:
        results["generation"] = measure_generation(backbone, config, args.kind)
        print(json.dumps(results["generation"], indent=1), flush=True)
    if args.sd15:
        results["sd15_cpu"] = measure_sd15_cpu()
        print(json.dumps(results["sd15_cpu"], indent=1), flush=True)
    results["load_after"] = os.getloadavg()
    aurocs = [s["auroc_round_trip"] for s in results["seeds"]] or [float("nan")]
    print(f"AUROC (round trip) over seeds {args.seeds}: mean {np.mean(aurocs):.4f}, min {min(aurocs):.4f}, "
          f"max {max(aurocs):.4f}; load {load} -> {results['load_after']}")
    if args.out:
        args.out.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
