"""Shared helpers of the benchmark: backbones to measure on, interleaved timing, memory, machine description.

Every measurement runs in its own ``python -m bench.worker`` process (see :mod:`bench.worker`), so that the peak
resident memory it reports belongs to that measurement alone and one measurement's allocations cannot slow the
next one down.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

logger = logging.getLogger("bench")

ROOT = Path(__file__).resolve().parent.parent

# SD-1.5's published configs (runwayml/stable-diffusion-v1-5: unet/, vae/, text_encoder/ config.json), typed in.
SD15_UNET = dict(
    sample_size=64,
    in_channels=4,
    out_channels=4,
    layers_per_block=2,
    block_out_channels=(320, 640, 1280, 1280),
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=768,
    attention_head_dim=8,
)
SD15_VAE = dict(
    sample_size=512,
    in_channels=3,
    out_channels=3,
    latent_channels=4,
    block_out_channels=(128, 256, 512, 512),
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    layers_per_block=2,
    norm_num_groups=32,
    scaling_factor=0.18215,
)
SD15_TEXT = dict(hidden_size=768, intermediate_size=3072, num_attention_heads=12, num_hidden_layers=12,
                 max_position_embeddings=77, hidden_act="quick_gelu", projection_dim=768)


# ------------------------------------------------------------------------------------------------ backbones


def cheap_weights(module: Any, seed: int = 0) -> Any:
    """Give a module built on the meta device real, cheap random weights.

    Every matrix / kernel with the same fan-in is a view of one shared random pool scaled 1/sqrt(fan_in); 1-d
    parameters are ones (weights) or zeros (biases); buffers are materialised as zeros (then re-initialised where
    the module knows how, e.g. position ids). Drawing SD-1.5's ~1.1 billion numbers would take many seconds and
    4 GB; the pools take a few hundred MB. The arithmetic cost of a forward pass does not depend on the values.
    """
    import torch

    params = [(m, n, p) for m in module.modules() for n, p in m._parameters.items() if p is not None]
    need: dict[int, int] = {}
    for _, _, p in params:
        key = p[0].numel() if p.ndim > 1 else 0
        need[key] = max(need.get(key, 0), p.numel())
    g = torch.Generator().manual_seed(seed)
    pools = {k: torch.randn(n, generator=g) * k**-0.5 for k, n in need.items() if k}
    ones, zeros = torch.ones(need.get(0, 1)), torch.zeros(need.get(0, 1))
    for owner, name, p in params:
        if p.ndim > 1:
            data = pools[p[0].numel()][: p.numel()].view(p.shape)
        else:
            data = (zeros if name == "bias" else ones)[: p.numel()]
        owner._parameters[name] = torch.nn.Parameter(data, requires_grad=False)
    for owner in module.modules():
        for name, buf in list(owner._buffers.items()):
            if buf is not None and buf.is_meta:
                if name == "position_ids":
                    value = torch.arange(buf.shape[-1]).expand(buf.shape).clone()
                else:
                    value = torch.zeros(buf.shape, dtype=buf.dtype)
                owner._buffers[name] = value
    return module


def nonzero_adapter(adapter: Any, seed: int = 0) -> None:
    """Give the zero-initialised weights small random values, as after training: LoRA up-projections (anogen's
    ``.up``, peft's text-encoder ``lora_B``), a zero-initialised SAIM's ``proj_out``, and BCM's gate ``alpha``
    (0.3, so that the reference pass matters). No cost difference, but no shortcut through zeros either."""
    import torch

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in adapter.named_parameters():
            if name.endswith(".up") or ".proj_out." in name or "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=g) * 0.01)
            elif name.endswith("bcm.alpha"):
                param.fill_(0.3)


def sd15_backbone(resolution: int = 512, seed: int = 0) -> Any:
    """SD-1.5's UNet, VAE and CLIP text encoder architectures with cheap random weights (see :func:`cheap_weights`).

    The tokenizer is anogen's character tokenizer (77 tokens, like CLIP's); the text encoder's vocabulary is sized
    to it (the vocabulary size changes one embedding lookup, not the cost).
    """
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from anogen.model.backbone import Backbone, module_hash
    from anogen.model.small_configs import tiny_configs
    from anogen.model.tokenizer import build_char_tokenizer, vocab_size

    with torch.device("meta"):
        unet = UNet2DConditionModel(**{**SD15_UNET, "sample_size": resolution // 8})
        vae = AutoencoderKL(**{**SD15_VAE, "sample_size": resolution})
        text = CLIPTextModel(
            CLIPTextConfig(**SD15_TEXT, vocab_size=vocab_size(), bos_token_id=vocab_size() - 2,
                           eos_token_id=vocab_size() - 1, pad_token_id=vocab_size() - 1)
        )
    cheap_weights(unet, seed)
    cheap_weights(vae, seed + 1)
    cheap_weights(text, seed + 2)
    with tempfile.TemporaryDirectory(prefix="bench-tok-") as folder:
        tokenizer = build_char_tokenizer(folder, model_max_length=77)
    backbone = Backbone(unet=unet, vae=vae, text_encoder=text, tokenizer=tokenizer,
                        scheduler_config=tiny_configs()["scheduler"], source="sd15-random", content_hash="")
    for m in (unet, vae, text):
        m.eval()
    backbone.content_hash = "sd15-random" if os.environ.get("BENCH_FAST_HASH", "1") == "1" else module_hash(backbone)
    return backbone


def toy_backbone() -> tuple[Any, str]:
    """The shipped ``toy`` backbone, or (while its asset is missing) the toy architecture with random weights."""
    from anogen.config import BackboneConfig
    from anogen.errors import BackboneError
    from anogen.model.backbone import load_backbone

    try:
        return load_backbone(BackboneConfig("toy")), "toy (shipped weights)"
    except BackboneError:
        return random_toy_backbone(), "toy architecture, random weights (the toy asset was missing)"


def random_toy_backbone(seed: int = 0) -> Any:
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from anogen.model.backbone import Backbone
    from anogen.model.small_configs import tiny_configs
    from anogen.model.tokenizer import build_char_tokenizer
    from anogen.toy.pretrain import toy_configs

    configs = toy_configs()
    state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(**configs["unet"])
        vae = AutoencoderKL(**configs["vae"])
        text = CLIPTextModel(CLIPTextConfig(**configs["text_encoder"]))
    finally:
        torch.random.set_rng_state(state)
    with tempfile.TemporaryDirectory(prefix="bench-tok-") as folder:
        tokenizer = build_char_tokenizer(folder)
    for m in (unet, vae, text):
        m.requires_grad_(False)
        m.eval()
    return Backbone(unet=unet, vae=vae, text_encoder=text, tokenizer=tokenizer,
                    scheduler_config=tiny_configs()["scheduler"], source="toy-random", content_hash="toy-random")


def make_backbone(name: str, resolution: int | None = None) -> tuple[Any, str]:
    """``toy`` | ``sd15`` | ``tiny`` -> (backbone, description)."""
    if name == "toy":
        return toy_backbone()
    if name == "sd15":
        res = resolution or 512
        return sd15_backbone(res), f"SD-1.5 architecture (UNet, VAE, CLIP-L), random weights, {res} px"
    if name == "tiny":
        from anogen.model.backbone import build_tiny

        return build_tiny(0, resolution or 32), "tiny (random test backbone)"
    raise ValueError(f"unknown bench backbone {name!r}")


# --------------------------------------------------------------------------------------------------- timing


def interleaved(
    fns: dict[str, Callable[[], Any]],
    repeats: int,
    warmup: int = 1,
    around: dict[str, tuple[Callable[[], Any], Callable[[], Any]]] | None = None,
) -> dict[str, dict[str, Any]]:
    """Time several callables round-robin (A, B, A, B, ...) and summarise each by its median.

    Interleaving spreads the shared machine's load changes evenly over the contestants; the median ignores the
    occasional stall. One warm-up round (not counted) fills caches and lazy initialisations. ``around[name]`` is an
    untimed (enter, exit) pair run before / after each call of ``name`` (e.g. installing an adapter).
    """
    around = around or {}
    times: dict[str, list[float]] = {k: [] for k in fns}
    for r in range(warmup + repeats):
        for name, fn in fns.items():
            enter, leave = around.get(name, (None, None))
            if enter is not None:
                enter()
            start = time.perf_counter()
            fn()
            elapsed = time.perf_counter() - start
            if leave is not None:
                leave()
            if r >= warmup:
                times[name].append(elapsed)
            logger.debug("%s: %.3f s", name, elapsed)
    return {k: summary(v) for k, v in times.items()}


def summary(values: list[float]) -> dict[str, Any]:
    return {
        "median_s": statistics.median(values),
        "min_s": min(values),
        "max_s": max(values),
        "n": len(values),
        "all_s": [round(v, 4) for v in values],
    }


def peak_rss_mb() -> float:
    """This process's peak resident set size (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1 << 20) if sys.platform == "darwin" else peak / 1024


def rss_mb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / (1 << 20)


def gpu_peak_mb() -> float | None:
    import torch

    if not torch.cuda.is_available():
        return None
    return torch.cuda.max_memory_allocated() / (1 << 20)


def device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


# -------------------------------------------------------------------------------------------- subprocesses


def run_worker(task: str, args: dict[str, Any], *, threads: int, timeout: float = 3600) -> dict[str, Any]:
    """Run one measurement in a fresh ``python -m bench.worker`` process; returns its JSON result."""
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), HF_HUB_OFFLINE="1",
               TOKENIZERS_PARALLELISM="false", BENCH_THREADS=str(threads))
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    with tempfile.NamedTemporaryFile("r", suffix=".json", prefix="bench-") as result_file:
        cmd = [sys.executable, "-m", "bench.worker", task, json.dumps(args), result_file.name]
        started = time.perf_counter()
        logger.info("bench: %s %s", task, json.dumps(args))
        proc = subprocess.run(cmd, cwd=ROOT, env=env, timeout=timeout, capture_output=True, text=True)
        if proc.returncode != 0:
            tail = (proc.stderr or proc.stdout)[-3000:]
            return {"error": f"{task} failed (exit {proc.returncode}): {tail}", "wall_s": time.perf_counter() - started}
        result = json.loads(Path(result_file.name).read_text() or "{}")
    result["wall_s"] = round(time.perf_counter() - started, 2)
    return result


# ------------------------------------------------------------------------------------------------ machine


def machine() -> dict[str, Any]:
    """CPU model, cores, memory, GPU, load and library versions of this machine."""
    import psutil

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info: dict[str, Any] = {
        "cpu": cpu,
        "logical_cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "ram_gb": round(psutil.virtual_memory().total / (1 << 30), 1),
        "os": platform.platform(),
        "python": platform.python_version(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }
    import diffusers
    import numpy
    import peft
    import torch
    import transformers

    import anogen

    info["gpu"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    info["versions"] = {
        "anogen": getattr(anogen, "__version__", "?"),
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "numpy": numpy.__version__,
    }
    try:
        info["git_commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                                            text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        info["git_commit"] = None
    return info
