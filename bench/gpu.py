"""``python -m bench.gpu``: one prepared GPU check at SD-1.5 size (random weights, nothing downloaded), 512 px.

Measures, on one CUDA device and within ``--budget-s`` seconds (default 240, sized for one H100-class GPU):

* **fit**: seconds per optimiser step and peak memory for fp32 / bf16 / fp16, with and without gradient
  checkpointing, for both recipes (``reference`` and ``fast``, docs/presets.md), next to anogen's own estimate
  (``anogen fit --dry-run``) and the theoretical floor (UNet TFLOP per step at the device's nominal peak);
* **synth**: seconds per generated pair for both recipes, with and without BCM, side by side with diffusers'
  ``StableDiffusionPipeline`` making the same two images with the same sampler, steps and guidance, next to the
  floor (UNet TFLOP per pair). With random weights no mask is meaningful, so this is per *generated* pair; divide
  by the acceptance rate of your own run for seconds per accepted pair.

Every output is checked finite. Results are written as they come (``OUT/gpu.json``, ``OUT/benchmarks-gpu.md``,
``OUT/progress.log``: three files), so a run cut short still reports; a full run also writes
``docs/benchmarks-gpu.md`` (``--no-docs`` to skip). ``--smoke`` runs every code path at the ``tiny`` backbone's
size on the CPU in seconds (CI runs it).

On a bare offline GPU machine with torch but without diffusers: on a connected machine run
``bash scripts/gpu_wheels.sh wheels`` (pip downloads every other dependency as wheels), copy the repository with
``wheels/`` to the GPU machine and run ``python -m bench.gpu`` there: missing packages are installed from
``--wheels`` (default ``wheels/``) into a temporary folder, never into the system.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import nonzero_adapter

ROOT = Path(__file__).resolve().parent.parent
DOCS_FILE = ROOT / "docs" / "benchmarks-gpu.md"
NEEDED = ("diffusers", "transformers", "accelerate", "peft", "safetensors", "yaml", "PIL", "numpy")
# Nominal dense peaks in TFLOP/s (vendor data sheets; fp32 = CUDA cores, bf16/fp16 = tensor cores).
PEAK_TFLOPS = {
    "H200": {"fp32": 67.0, "bf16": 989.0, "fp16": 989.0},
    "H100": {"fp32": 67.0, "bf16": 989.0, "fp16": 989.0},
    "A100": {"fp32": 19.5, "bf16": 312.0, "fp16": 312.0},
    "L40S": {"fp32": 91.6, "bf16": 362.0, "fp16": 362.0},
    "A10": {"fp32": 31.2, "bf16": 125.0, "fp16": 125.0},
    "L4": {"fp32": 30.3, "bf16": 121.0, "fp16": 121.0},
    "4090": {"fp32": 82.6, "bf16": 165.0, "fp16": 165.0},
}
PRECISIONS = ("fp32", "bf16", "fp16")


# ------------------------------------------------------------------------------------------ dependencies


def ensure_dependencies(wheels: Path | None) -> str:
    """Import what the bench needs; when something is missing, install ``wheels/*.whl`` into a temporary folder
    (``pip --target``, offline) and put it first on ``sys.path``. Returns where the packages came from."""
    import importlib

    missing = [name for name in NEEDED if importlib.util.find_spec(name) is None]
    if not missing:
        return "installed environment"
    if wheels is None or not wheels.is_dir() or not list(wheels.glob("*.whl")):
        raise SystemExit(
            f"bench.gpu: missing {', '.join(missing)} and no wheels in {wheels}; on a connected machine run "
            "`bash scripts/gpu_wheels.sh wheels` and copy wheels/ here"
        )
    import atexit
    import shutil

    site = Path(tempfile.mkdtemp(prefix="anogen-bench-site-"))
    atexit.register(shutil.rmtree, site, ignore_errors=True)
    cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--no-index", "--no-deps", "--target", str(site),
           *map(str, sorted(wheels.glob("*.whl")))]
    subprocess.run(cmd, check=True)
    sys.path.insert(0, str(site))
    importlib.invalidate_caches()
    return f"wheels from {wheels} (installed into {site})"


# ---------------------------------------------------------------------------------------------- results


class Recorder:
    """Holds the results and rewrites the (few) output files after every measurement."""

    def __init__(self, out: Path, docs: bool, meta: dict[str, Any]):
        self.out, self.docs = out, docs
        out.mkdir(parents=True, exist_ok=True)
        self.data: dict[str, Any] = {"schema_version": 1, **meta, "fit": [], "synth": [], "skipped": []}
        self.started = time.monotonic()

    def log(self, line: str) -> None:
        stamp = f"[{time.monotonic() - self.started:7.1f} s] {line}"
        print(stamp, flush=True)
        with open(self.out / "progress.log", "a", encoding="utf-8") as handle:
            handle.write(stamp + "\n")

    def add(self, part: str, row: dict[str, Any]) -> None:
        self.data[part].append(row)
        self.save()

    def save(self, final: bool = False) -> None:
        self.data["elapsed_s"] = round(time.monotonic() - self.started, 1)
        self.data["complete"] = final
        _write(self.out / "gpu.json", json.dumps(self.data, indent=2) + "\n")
        text = render(self.data)
        _write(self.out / "benchmarks-gpu.md", text)
        if self.docs and final:
            _write(DOCS_FILE, text)


def _write(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


def render(data: dict[str, Any]) -> str:
    """The markdown report of a run (also what docs/benchmarks-gpu.md holds after a full run)."""
    m = data.get("machine", {})
    kind = "smoke run (tiny backbone, CPU): not a measurement" if data.get("smoke") else (
        "SD-1.5 architecture, random weights")
    lines = [
        "# GPU benchmark (`python -m bench.gpu`)",
        "",
        f"Device: **{m.get('device')}**; torch {m.get('torch')}, diffusers {m.get('diffusers')}; "
        f"{kind}, "
        f"{data.get('resolution')} px; budget {data.get('budget_s')} s, took {data.get('elapsed_s')} s"
        f"{'' if data.get('complete') else ' (cut short: partial results)'}; dependencies: {data.get('deps')}.",
        "",
        f"UNet forward: {_fmt(data.get('unet_tflop_per_row'))} TFLOP per row at {data.get('resolution')} px "
        "(counted with `torch.utils.flop_counter`). *Floor* = the UNet TFLOP of the work at the device's nominal "
        "dense peak (fp32: CUDA cores; bf16/fp16: tensor cores); `-` where the device is not in the table.",
        "",
        "## fit: one optimiser step",
        "",
        "| recipe | precision | checkpointing | pairs | s/step | floor s/step | peak memory (MiB) | estimate (MiB) "
        "| finite |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in data.get("fit", []):
        lines.append(
            f"| {r['recipe']} | {r['precision']} | {'yes' if r['checkpointing'] else 'no'} | {r['pairs']} "
            f"| {_fmt(r.get('s_per_step'))} | {_fmt(r.get('floor_s'))} | {_fmt(r.get('peak_mib'), 5)} "
            f"| {_fmt(r.get('estimate_mib'), 5)} | {r.get('finite')} |"
        )
    lines += [
        "",
        "## synth: seconds per generated pair (whole + part), anogen vs `StableDiffusionPipeline`",
        "",
        "| recipe | BCM | sampler | steps | guidance | anogen s/pair | pipeline s/pair | ratio | floor s/pair "
        "| UNet TFLOP/pair | finite |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in data.get("synth", []):
        lines.append(
            f"| {r['recipe']} | {'on' if r['bcm'] else 'off'} | {r['sampler']} | {r['steps']} | {r['guidance']} "
            f"| {_fmt(r.get('anogen_s_per_pair'))} | {_fmt(r.get('pipeline_s_per_pair'))} | {_fmt(r.get('ratio'))} "
            f"| {_fmt(r.get('floor_s'))} | {_fmt(r.get('tflop_per_pair'))} | {r.get('finite')} |"
        )
    if data.get("skipped"):
        lines += ["", "Skipped (budget or device): " + "; ".join(data["skipped"]) + "."]
    lines += ["", "Rerun: `python -m bench.gpu --out bench-gpu` (see the module docstring of `bench/gpu.py`).", ""]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------ model


def _configs(recipe: str, bcm: bool) -> Any:
    from anogen.config import resolve

    return resolve("mvtec/bottle" if bcm else "mvtec/carpet", recipe=recipe)


def unet_tflop_per_row(backbone: Any, device: Any) -> float:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    side = backbone.resolution // backbone.vae_scale_factor
    unet = backbone.unet
    dtype = next(unet.parameters()).dtype
    x = torch.zeros(1, backbone.latent_channels, side, side, device=device, dtype=dtype)
    states = torch.zeros(1, 77, unet.config.cross_attention_dim, device=device, dtype=dtype)
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        unet(x, torch.tensor([500], device=device), states)
    return counter.get_total_flops() / 1e12


def _peak_tflops(device_name: str, precision: str) -> float | None:
    for key, peaks in PEAK_TFLOPS.items():
        if key in device_name:
            return peaks[precision]
    return None


def _sync(device: Any) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def _reset_peak(device: Any) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def _peak_mib(device: Any) -> float | None:
    import torch

    return torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else None


def fit_row(backbone: Any, device: Any, recipe: str, precision: str, checkpointing: bool, steps: int,
            unet_tflop: float, device_name: str) -> dict[str, Any]:
    """Time ``steps`` optimiser steps (after one warm-up) of the recipe's BCM adapter, as `anogen fit` runs them:
    frozen backbone in the precision, adapter fp32 under autocast, text-encoder LoRA when the recipe has one."""
    import torch

    from anogen.fit import LatentCache, draw_batch, estimate_peak_bytes, pair_loss
    from anogen.model.dual import DualAdapter, encode_prompts

    config = _configs(recipe, bcm=True)
    pairs = config.train.batch_size
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    for module in (backbone.unet, backbone.text_encoder):
        module.to(device=device, dtype=dtype)
    if checkpointing:
        backbone.unet.enable_gradient_checkpointing()
    adapter = DualAdapter.from_backbone(backbone, config.adapter, seed=0).to(device)
    params = adapter.trainable_parameters()
    optimizer = torch.optim.AdamW(params, lr=config.train.learning_rate)
    scaler = torch.amp.GradScaler(device.type) if precision == "fp16" else None
    side = backbone.resolution // backbone.vae_scale_factor
    g = torch.Generator().manual_seed(3)
    shape = (4, 1, backbone.latent_channels, side, side)
    cache = LatentCache(whole=torch.randn(shape, generator=g), part=torch.randn(shape, generator=g) * 0.3,
                        background=torch.randn(shape, generator=g), variants=[(0, False)])
    scheduler = backbone.make_scheduler()
    scheduler.alphas_cumprod = scheduler.alphas_cumprod.to(device)
    prompts = [config.adapter.prompt_whole, config.adapter.prompt_part]
    adapter.install(backbone.unet)
    backbone.unet.train()
    losses: list[float] = []
    autocast = torch.autocast(device.type, dtype=dtype, enabled=precision != "fp32")

    def step(i: int) -> None:
        batch = draw_batch(0, "bench", "gpu", i, 0, pairs, cache, int(scheduler.config.num_train_timesteps))
        with autocast:
            embeds = encode_prompts(backbone, prompts, adapter).to(device)
            loss = pair_loss(backbone, adapter, scheduler, cache, batch, embeds, device)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
        else:
            loss.backward()
        if config.train.max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(params, config.train.max_grad_norm)
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))

    try:
        _reset_peak(device)
        step(0)
        _sync(device)
        start = time.perf_counter()
        for i in range(1, steps + 1):
            step(i)
        _sync(device)
        per_step = (time.perf_counter() - start) / steps
        peak = _peak_mib(device)
    finally:
        backbone.unet.eval()
        adapter.uninstall(backbone.unet)
        if checkpointing:
            backbone.unet.disable_gradient_checkpointing()
    unet_config = dict(backbone.unet.config)
    frozen = sum(p.numel() for m in (backbone.unet, backbone.vae, backbone.text_encoder) for p in m.parameters())
    estimate = estimate_peak_bytes(
        unet_config, trainable=adapter.num_trainable(), frozen=frozen, resolution=backbone.resolution,
        vae_scale_factor=backbone.vae_scale_factor, batch_size=pairs,
        mixed_precision="no" if precision == "fp32" else precision, gradient_checkpointing=checkpointing, bcm=True,
    )
    # forward + input-gradient backward through the frozen UNet (about 2x forward; 3x with checkpointing)
    work = unet_tflop * pairs * 3 * (3 if checkpointing else 2)
    peak_tflops = _peak_tflops(device_name, precision)
    finite = all(math.isfinite(v) for v in losses) and all(bool(torch.isfinite(p).all()) for p in params)
    return {"recipe": recipe, "precision": precision, "checkpointing": checkpointing, "pairs": pairs,
            "steps": steps, "s_per_step": per_step, "peak_mib": peak, "estimate_mib": estimate / 2**20,
            "trainable": adapter.num_trainable(), "unet_tflop_per_step": work,
            "floor_s": work / peak_tflops if peak_tflops else None, "finite": finite, "loss": losses[-1]}


def synth_row(backbone: Any, device: Any, recipe: str, bcm: bool, pairs: int, steps_override: int | None,
              unet_tflop: float, device_name: str, precision: str) -> dict[str, Any]:
    """anogen's ``sample_pairs`` against ``StableDiffusionPipeline`` (same UNet, sampler, steps, guidance; two
    images per pair), one warm-up each, then one timed call each."""
    import dataclasses

    import numpy as np
    import torch
    from diffusers import StableDiffusionPipeline

    from anogen.model.dual import DualAdapter
    from anogen.records import AdapterRecord
    from anogen.synth import encode_backgrounds, sample_pairs

    config = _configs(recipe, bcm)
    sample = dataclasses.replace(config.sample, mixed_precision="no" if precision == "fp32" else precision)
    if steps_override:
        sample = dataclasses.replace(sample, steps=steps_override)
    adapter = DualAdapter.from_backbone(backbone, config.adapter, seed=0)
    nonzero_adapter(adapter, seed=0)
    adapter.to(device)
    record = AdapterRecord.from_dict(
        {"prompts": {"whole": config.adapter.prompt_whole, "part": config.adapter.prompt_part}}
    )
    backgrounds = None
    if bcm:
        rng = np.random.default_rng(0)
        images = [rng.integers(0, 255, (backbone.resolution,) * 2 + (3,), dtype=np.uint8) for _ in range(2)]
        backgrounds = encode_backgrounds(backbone, images, device=device)
    seeds = list(range(pairs))
    warm = dataclasses.replace(sample, steps=2)
    sample_pairs(backbone, adapter, record, seeds, warm, background_latents=backgrounds, device=device)
    _sync(device)
    start = time.perf_counter()
    images, parts = sample_pairs(backbone, adapter, record, seeds, sample, background_latents=backgrounds,
                                 device=device, output_type="float")
    _sync(device)
    anogen_s = (time.perf_counter() - start) / pairs
    pipe = StableDiffusionPipeline(
        vae=backbone.vae, text_encoder=backbone.text_encoder, tokenizer=backbone.tokenizer, unet=backbone.unet,
        scheduler=backbone.make_scheduler(sample.sampler), safety_checker=None, feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    prompts = [config.adapter.prompt_whole, config.adapter.prompt_part] * pairs
    generator = torch.Generator("cpu").manual_seed(0)
    autocast = torch.autocast(device.type, dtype=torch.float16 if precision == "fp16" else torch.bfloat16,
                              enabled=precision != "fp32" and device.type == "cuda")
    with autocast:
        pipe(prompts, num_inference_steps=2, guidance_scale=sample.guidance, output_type="np", generator=generator)
        _sync(device)
        start = time.perf_counter()
        out = pipe(prompts, num_inference_steps=sample.steps, guidance_scale=sample.guidance, output_type="np",
                   generator=generator).images
        _sync(device)
    pipeline_s = (time.perf_counter() - start) / pairs
    guided = sample.guidance > 1.0
    rows = (2 + (1 if bcm else 0)) * (2 if guided else 1)
    work = unet_tflop * rows * sample.steps
    peak_tflops = _peak_tflops(device_name, precision)
    finite = bool(np.isfinite(images).all() and np.isfinite(parts).all() and np.isfinite(out).all())
    return {"recipe": recipe, "bcm": bcm, "sampler": sample.sampler, "steps": sample.steps,
            "guidance": sample.guidance, "pairs": pairs, "precision": precision, "anogen_s_per_pair": anogen_s,
            "pipeline_s_per_pair": pipeline_s, "ratio": anogen_s / pipeline_s, "tflop_per_pair": work,
            "floor_s": work / peak_tflops if peak_tflops else None, "finite": finite}


# ------------------------------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.gpu", description=__doc__.split("\n\n")[0])
    parser.add_argument("--budget-s", type=float, default=240.0, help="stop starting new measurements after this")
    parser.add_argument("--out", type=Path, default=Path("bench-gpu"), help="folder for gpu.json, the report, log")
    parser.add_argument("--smoke", action="store_true", help="tiny backbone on CPU, every code path, seconds")
    parser.add_argument("--wheels", type=Path, default=ROOT / "wheels", help="wheels for a bare machine")
    parser.add_argument("--no-docs", action="store_true", help="do not write docs/benchmarks-gpu.md")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    deps = ensure_dependencies(args.wheels)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import diffusers
    import torch
    import transformers

    # casting random-weight models with .to() makes diffusers warn once per call; nothing here needs it
    diffusers.utils.logging.set_verbosity_error()
    transformers.utils.logging.set_verbosity_error()
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    cuda = torch.cuda.is_available() and not args.smoke
    if not cuda and not args.smoke:
        raise SystemExit("bench.gpu: no CUDA device; run with --smoke for the CPU check of the script itself")
    device = torch.device("cuda" if cuda else "cpu")
    device_name = torch.cuda.get_device_name(0) if cuda else f"CPU ({platform.processor() or platform.machine()})"
    if args.smoke:
        from anogen.model.backbone import build_tiny

        backbone = build_tiny(seed=0)
    else:
        from bench.common import sd15_backbone

        backbone = sd15_backbone(resolution=512)
    backbone.vae.to(device)
    for module in (backbone.unet, backbone.vae, backbone.text_encoder):
        module.requires_grad_(False)
    meta = {"smoke": args.smoke, "resolution": backbone.resolution, "budget_s": args.budget_s, "deps": deps,
            "machine": {"device": device_name, "torch": torch.__version__, "diffusers": diffusers.__version__,
                        "python": platform.python_version()}}
    rec = Recorder(args.out, docs=not args.no_docs and not args.smoke, meta=meta)
    deadline = time.monotonic() + args.budget_s
    backbone.unet.to(device=device, dtype=torch.float32)
    backbone.text_encoder.to(device=device)
    rec.data["unet_tflop_per_row"] = tflop = unet_tflop_per_row(backbone, device)
    rec.log(f"{device_name}: UNet {tflop:.4f} TFLOP per row at {backbone.resolution} px; deps: {deps}")

    precisions = PRECISIONS if cuda else ("fp32", "bf16")
    if not cuda:
        rec.data["skipped"].append("fit fp16 (needs CUDA)")
    fit_steps = 3 if cuda else 1
    for recipe in ("reference", "fast"):
        for precision in precisions:
            for checkpointing in (False, True):
                name = f"fit {recipe} {precision}{' checkpointing' if checkpointing else ''}"
                if time.monotonic() > deadline - (0.45 * args.budget_s):  # keep ~45 % of the budget for synth
                    rec.data["skipped"].append(f"{name} (budget)")
                    continue
                try:
                    row = fit_row(backbone, device, recipe, precision, checkpointing, fit_steps, tflop, device_name)
                except torch.OutOfMemoryError:
                    rec.data["skipped"].append(f"{name} (out of memory)")
                    continue
                rec.add("fit", row)
                rec.log(f"{name}: {row['s_per_step']:.3f} s/step, peak {_fmt(row['peak_mib'], 5)} MiB "
                        f"(estimate {row['estimate_mib']:.0f}), finite {row['finite']}")
    # sampling in bf16 on a GPU (half precision as users run it; bf16 keeps fp32's range, so random weights
    # cannot overflow the way fp16 might), fp32 on the CPU smoke check
    synth_precision = "bf16" if cuda else "fp32"
    synth_dtype = torch.bfloat16 if cuda else torch.float32
    for module in (backbone.unet, backbone.text_encoder, backbone.vae):
        module.to(dtype=synth_dtype)
    for recipe in ("reference", "fast"):
        for bcm in (True, False):
            name = f"synth {recipe} BCM {'on' if bcm else 'off'}"
            if time.monotonic() > deadline:
                rec.data["skipped"].append(f"{name} (budget)")
                continue
            row = synth_row(backbone, device, recipe, bcm, pairs=4 if cuda else 1,
                            steps_override=None if cuda else 2, unet_tflop=tflop, device_name=device_name,
                            precision=synth_precision)
            rec.add("synth", row)
            rec.log(f"{name}: anogen {row['anogen_s_per_pair']:.3f} s/pair, pipeline "
                    f"{row['pipeline_s_per_pair']:.3f} s/pair (x{row['ratio']:.2f}), finite {row['finite']}")
    rec.save(final=True)
    bad = [r for part in ("fit", "synth") for r in rec.data[part] if not r["finite"]]
    if bad:
        raise SystemExit(f"bench.gpu: non-finite outputs in {len(bad)} measurement(s); see {args.out / 'gpu.json'}")
    return rec.data


if __name__ == "__main__":
    main()
