"""``python -m bench.memory``: anogen's peak-memory estimate (``anogen fit --dry-run``) against a measured peak.

For each recipe (``reference``, ``fast``; docs/presets.md) a fresh process builds SD-1.5's architecture with cheap
random weights (``bench.common.sd15_backbone``), runs two fit steps of the recipe's BCM adapter (fp32, CPU, or the
GPU when there is one) and reports its peak memory beside the estimate, by part. On a CPU the measured figure is
peak RSS minus the RSS after loading: the cheap weights share a few random pools, so the frozen weights' real
size (counted exactly: parameters x bytes) is not in the RSS and is compared by arithmetic only; the peak covers
the adapter with its optimizer state and the activations. On a GPU it is ``torch.cuda.max_memory_allocated``.

    python -m bench.memory --resolution 128        # the figures in docs/fit.md, "Memory"
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def _rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def measure(recipe: str, resolution: int) -> dict[str, Any]:
    """One recipe in this process (call it in a fresh one: peak RSS is per process)."""
    import torch

    from anogen.memory import estimate_peak
    from bench.common import sd15_backbone
    from bench.gpu import fit_row

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    backbone = sd15_backbone(resolution=resolution)
    for module in (backbone.unet, backbone.vae, backbone.text_encoder):
        module.requires_grad_(False)
    backbone.vae.to(device)
    loaded = _rss_mib()
    row = fit_row(backbone, device, recipe, "fp32", False, 1, 0.0, "")
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    frozen = sum(p.numel() for m in (backbone.unet, backbone.vae, backbone.text_encoder) for p in m.parameters())
    estimate = estimate_peak(dict(backbone.unet.config), trainable=row["trainable"], frozen=frozen,
                             resolution=resolution, vae_scale_factor=backbone.vae_scale_factor,
                             batch_size=row["pairs"], mixed_precision="no", gradient_checkpointing=False, bcm=True)
    parts = estimate.to_dict()
    measured = row["peak_mib"] if device.type == "cuda" else peak_rss - loaded
    estimated = (parts["adapter_and_optimizer"] + parts["activations"]) * 1.1 / 2**20
    if device.type == "cuda":
        estimated = parts["total"] / 2**20
    return {"recipe": recipe, "resolution": resolution, "device": device.type, "pairs": row["pairs"],
            "trainable": row["trainable"], "frozen": frozen, "rss_after_load_mib": round(loaded),
            "peak_rss_mib": round(peak_rss), "measured_mib": round(measured),
            "estimated_mib": round(estimated), "ratio_measured_to_estimate": round(measured / estimated, 3),
            "estimate_parts_mib": {k: (round(v / 2**20) if isinstance(v, int) and k != "smallest_gpu_gib" else v)
                                   for k, v in parts.items()}}


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(prog="python -m bench.memory", description=__doc__.split("\n\n")[0])
    parser.add_argument("--resolution", type=int, default=128)
    parser.add_argument("--recipes", nargs="+", default=["reference", "fast"])
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(measure(args.worker, args.resolution)))
        return []
    results = []
    for recipe in args.recipes:
        env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
        proc = subprocess.run([sys.executable, "-m", "bench.memory", "--worker", recipe, "--resolution",
                               str(args.resolution)], cwd=ROOT, env=env, capture_output=True, text=True, check=True)
        result = json.loads(proc.stdout.strip().splitlines()[-1])
        results.append(result)
        print(json.dumps(result), flush=True)
    return results


if __name__ == "__main__":
    main()
