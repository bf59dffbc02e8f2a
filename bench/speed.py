"""Speed and memory measurements: anogen's synth, fit and synth's end-to-end overhead against stock diffusers.

Each ``task_*`` function runs inside one ``python -m bench.worker`` process and returns a JSON-ready dict.
Contestants of one task share the backbone, resolution, steps, batch and prompts; a pair counts as two images
(the stock side always makes ``2 * pairs`` images or trains on ``2 * pairs`` samples). BCM is off for the
goals and timed as an extra contestant.
"""

from __future__ import annotations

import copy
import logging
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import (
    SD15_UNET,
    cheap_weights,
    gpu_peak_mb,
    interleaved,
    make_backbone,
    nonzero_adapter,
    peak_rss_mb,
    rss_mb,
)

logger = logging.getLogger("bench")

WHOLE, PART = "a vfx with sks", "sks"


def _adapter(backbone: Any, rank: int, saim_width: int | None, coupling: str = "saim", bcm: bool = False) -> Any:
    from anogen.config import AdapterConfig
    from anogen.model.dual import DualAdapter

    config = AdapterConfig(rank=rank, alpha=float(max(rank, 1)), coupling=coupling, saim_width=saim_width, bcm=bcm)
    adapter = DualAdapter.from_backbone(backbone, config, seed=0)
    nonzero_adapter(adapter, seed=1)
    return adapter.to(_device())


def _device() -> Any:
    import torch

    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


_BACKBONES: dict[tuple[str, Any], tuple[Any, str]] = {}


def _setup(args: dict[str, Any]) -> tuple[Any, str]:
    """The backbone of a task, built once per process (building SD-1.5 takes a while on a shared CPU)."""
    import torch

    key = (args["backbone"], args.get("resolution"))
    if key not in _BACKBONES:
        backbone, description = make_backbone(args["backbone"], args.get("resolution"))
        if _device().type != "cpu":
            backbone.to(_device())
        _BACKBONES[key] = (backbone, description)
    torch.manual_seed(0)
    return _BACKBONES[key]


def _sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _pipeline(backbone: Any, sampler: str) -> Any:
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline(
        vae=backbone.vae,
        text_encoder=backbone.text_encoder,
        tokenizer=backbone.tokenizer,
        unet=backbone.unet,
        scheduler=backbone.make_scheduler(sampler),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _sample_config(args: dict[str, Any]) -> Any:
    from anogen.config import SampleConfig

    return SampleConfig(sampler=args["sampler"], steps=args["steps"], guidance=args["guidance"],
                        batch_size=args["pairs"], count=args["pairs"])


# ------------------------------------------------------------------------------------------------- synth


def bare_loop(backbone: Any, adapter: Any, states: Any, pairs: int, sample_config: Any, seed: int = 0) -> Any:
    """The denoising loop alone: initial noise, scheduler, dual UNet with guidance; no text encoder, VAE or files."""
    import torch

    from anogen.model.dual import dual_forward

    device = _device()
    scheduler = backbone.make_scheduler(sample_config.sampler)
    scheduler.set_timesteps(sample_config.steps, device=device)
    side = backbone.resolution // backbone.vae_scale_factor
    g = torch.Generator("cpu").manual_seed(seed)
    latents = torch.randn((2 * pairs, backbone.latent_channels, side, side), generator=g).to(device)
    latents = latents * scheduler.init_noise_sigma
    guided = sample_config.guidance > 1.0
    with torch.no_grad():
        for t in scheduler.timesteps:
            model_in = torch.cat([latents, latents]) if guided else latents
            model_in = scheduler.scale_model_input(model_in, t)
            eps = dual_forward(backbone.unet, adapter, model_in, t, states)
            if guided:
                uncond, cond = eps.chunk(2)
                eps = uncond + sample_config.guidance * (cond - uncond)
            latents = scheduler.step(eps, t, latents, return_dict=False)[0]
    _sync()
    return latents


def _write_like_synth(folder: Path, first_id: int, images: Any, parts: Any) -> None:
    """What synth does per attempt after sampling (``anogen.synth.writing.write_attempt``): mask, three PNGs, a
    manifest row."""
    from anogen.config import MaskConfig
    from anogen.io import save_png_atomic
    from anogen.masks import make_mask
    from anogen.records.manifest import append_row, make_row, sample_name

    mask_config = MaskConfig()
    for k in range(len(images)):
        sample_id = first_id + k
        result = make_mask(parts[k], mask_config, size=images[k].shape[:2], object_mask=None)
        name = sample_name(sample_id)
        save_png_atomic(folder / "image" / f"{name}.png", images[k])
        save_png_atomic(folder / "part" / f"{name}.png", parts[k])
        save_png_atomic(folder / "mask" / f"{name}.png", result.mask)
        row = make_row(sample_id, seed=sample_id, category="bench", defect="bench", accepted=result.accepted,
                       reason=result.reason, mask_area=result.area, adapter_sha256="0" * 64)
        append_row(folder / "manifest.jsonl", row)


def task_synth(args: dict[str, Any]) -> dict[str, Any]:
    """synth time per pair vs StableDiffusionPipeline making 2 x pairs images; end-to-end vs bare loop; BCM."""
    import torch

    from anogen.model.dual import encode_prompts
    from anogen.records import AdapterRecord
    from anogen.synth import sample_pairs

    backbone, description = _setup(args)
    pairs = int(args["pairs"])
    sc = _sample_config(args)
    device = _device()
    adapter = _adapter(backbone, args["rank"], args.get("saim_width"))
    bcm_adapter = _adapter(backbone, args["rank"], args.get("saim_width"), bcm=True) if args.get("bcm") else None
    pipe = _pipeline(backbone, sc.sampler)
    size = backbone.resolution
    g = torch.Generator().manual_seed(7)
    backgrounds = torch.randn(pairs, backbone.latent_channels, size // backbone.vae_scale_factor,
                              size // backbone.vae_scale_factor, generator=g)
    seeds = list(range(pairs))
    guided = sc.guidance > 1.0
    with torch.no_grad():
        embeds = encode_prompts(backbone, ["", "", WHOLE, PART] if guided else [WHOLE, PART], adapter)
    states = (torch.cat([embeds[0:2].repeat(pairs, 1, 1), embeds[2:4].repeat(pairs, 1, 1)]) if guided
              else embeds.repeat(pairs, 1, 1)).to(device)
    out_root = Path(tempfile.mkdtemp(prefix="bench-synth-"))
    counter = {"round": 0}
    write_times: list[float] = []
    sample_times: list[float] = []

    def run_pipeline() -> None:
        pipe(prompt=[WHOLE, PART] * pairs, height=size, width=size, num_inference_steps=sc.steps,
             guidance_scale=sc.guidance, negative_prompt=[""] * (2 * pairs) if guided else None,
             generator=torch.Generator("cpu").manual_seed(0), output_type="np")
        _sync()

    def run_anogen_e2e() -> None:
        t0 = time.perf_counter()
        images, parts = sample_pairs(backbone, adapter, AdapterRecord.from_dict({}), seeds, sc, device=device)
        _sync()
        t1 = time.perf_counter()
        folder = out_root / f"round{counter['round']}"
        for sub in ("image", "part", "mask"):
            (folder / sub).mkdir(parents=True, exist_ok=True)
        _write_like_synth(folder, 0, images, parts)
        counter["round"] += 1
        sample_times.append(t1 - t0)
        write_times.append(time.perf_counter() - t1)

    def run_bcm() -> None:
        sample_pairs(backbone, bcm_adapter, AdapterRecord.from_dict({}), seeds, sc, device=device,
                     background_latents=backgrounds)
        _sync()

    def run_loop() -> None:
        bare_loop(backbone, adapter, states, pairs, sc)

    fns = {"pipeline": run_pipeline, "anogen_e2e": run_anogen_e2e, "bare_loop": run_loop}
    around = {"bare_loop": (lambda: adapter.install(backbone.unet), lambda: adapter.uninstall(backbone.unet))}
    if bcm_adapter is not None:
        fns["anogen_bcm"] = run_bcm
    warmup, repeats = int(args.get("warmup", 1)), int(args["repeats"])
    try:
        timings = interleaved(fns, repeats, warmup=warmup, around=around)
    finally:
        shutil.rmtree(out_root, ignore_errors=True)
    from bench.common import summary

    timings["anogen_sample"] = summary(sample_times[warmup:])
    timings["anogen_writes"] = summary(write_times[warmup:])
    return {"backbone": description, "pairs": pairs, "images": 2 * pairs, "steps": sc.steps, "sampler": sc.sampler,
            "guidance": sc.guidance, "resolution": size, "rank": args["rank"], "saim_width": args.get("saim_width"),
            "timings": timings}


def task_unet_step(args: dict[str, Any]) -> dict[str, Any]:
    """One denoising UNet call: stock vs dual (full, LoRA only, SAIM only, + BCM), same batch: where the time goes."""
    import torch

    from anogen.model.dual import dual_forward

    backbone, description = _setup(args)
    pairs = int(args["pairs"])
    rows = 2 * pairs * (2 if args["guidance"] > 1.0 else 1)
    side = backbone.resolution // backbone.vae_scale_factor
    g = torch.Generator().manual_seed(0)
    device = _device()
    x = torch.randn(rows, backbone.latent_channels, side, side, generator=g).to(device)
    dim = backbone.unet.config.cross_attention_dim
    emb = torch.randn(rows, backbone.tokenizer.model_max_length, dim, generator=g).to(device)
    background = torch.randn(rows // 2, backbone.latent_channels, side, side, generator=g).to(device)
    t = torch.tensor(500, device=device)
    rank, width = args["rank"], args.get("saim_width")
    adapters = {
        "dual": _adapter(backbone, rank, width),
        "dual_lora_only": _adapter(backbone, rank, width, coupling="none"),
        "dual_saim_only": _adapter(backbone, 0, width),
    }
    if args.get("bcm"):
        adapters["dual_bcm"] = _adapter(backbone, rank, width, bcm=True)
    unet = backbone.unet

    def stock() -> None:
        with torch.no_grad():
            unet(x, t, emb, return_dict=False)
        _sync()

    def dual(name: str) -> Any:
        def run() -> None:
            with torch.no_grad():
                dual_forward(unet, adapters[name], x, t, emb,
                             background_latents=background if name == "dual_bcm" else None)
            _sync()
        return run

    fns = {"stock": stock, **{name: dual(name) for name in adapters}}
    around = {name: (lambda a=a: a.install(unet), lambda a=a: a.uninstall(unet)) for name, a in adapters.items()}
    timings = interleaved(fns, int(args["repeats"]), warmup=int(args.get("warmup", 1)), around=around)
    return {"backbone": description, "rows": rows, "latent": side, "timings": timings,
            "trainable": {k: a.num_trainable() for k, a in adapters.items()}}


# --------------------------------------------------------------------------------------------------- fit


def _fit_inputs(backbone: Any, pairs: int, examples: int = 4) -> tuple[Any, Any]:
    import torch

    from anogen.fit import LatentCache
    from anogen.model.dual import encode_prompts

    side = backbone.resolution // backbone.vae_scale_factor
    g = torch.Generator().manual_seed(3)
    shape = (examples, 1, backbone.latent_channels, side, side)
    cache = LatentCache(whole=torch.randn(shape, generator=g), part=torch.randn(shape, generator=g) * 0.3,
                        background=None, variants=[(0, False)])
    with torch.no_grad():
        embeds = encode_prompts(backbone, [WHOLE, PART]).to(_device())
    return cache, embeds


def _second_unet(args: dict[str, Any], backbone: Any) -> Any:
    """An independent copy of the backbone's UNet for the peft side (peft rewrites the modules it wraps)."""
    import torch
    from diffusers import UNet2DConditionModel

    if args["backbone"] == "sd15":
        with torch.device("meta"):
            unet = UNet2DConditionModel(**{**SD15_UNET, "sample_size": backbone.unet.config.sample_size})
        unet = cheap_weights(unet, 0)
        return unet.to(_device()) if _device().type != "cpu" else unet
    return copy.deepcopy(backbone.unet)


def _anogen_step(backbone: Any, args: dict[str, Any]) -> Any:
    import torch

    from anogen.fit import draw_batch, pair_loss

    pairs = int(args["pairs"])
    device = _device()
    cache, embeds = _fit_inputs(backbone, pairs)
    adapter = _adapter(backbone, args["rank"], args.get("saim_width"), bcm=bool(args.get("bcm_fit")))
    params = adapter.trainable_parameters()
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    scheduler = backbone.make_scheduler()
    scheduler.alphas_cumprod = scheduler.alphas_cumprod.to(device)
    if args.get("bcm_fit"):
        cache.background = cache.whole * 0.5
    adapter.install(backbone.unet)
    backbone.unet.train()
    state = {"step": 0}

    def step() -> None:
        state["step"] += 1
        batch = draw_batch(0, "bench", "defect", state["step"], 0, pairs, cache, 1000)
        loss = pair_loss(backbone, adapter, scheduler, cache, batch, embeds, device)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        _sync()

    return step, adapter


def _peft_step(unet: Any, backbone: Any, args: dict[str, Any]) -> Any:
    """diffusers' LoRA fine-tuning step (examples/text_to_image/train_text_to_image_lora.py): peft LoRA on
    to_q/to_k/to_v/to_out.0, noise MSE, AdamW; on exactly the samples anogen draws (2 x pairs images)."""
    import torch
    from peft import LoraConfig

    from anogen.fit import draw_batch

    pairs = int(args["pairs"])
    device = _device()
    cache, embeds = _fit_inputs(backbone, pairs)
    rank = int(args["rank"])
    unet.requires_grad_(False)
    unet.add_adapter(LoraConfig(r=rank, lora_alpha=rank, init_lora_weights="gaussian",
                                target_modules=["to_k", "to_q", "to_v", "to_out.0"]))
    params = [p for p in unet.parameters() if p.requires_grad]
    for p in params:
        p.data = p.data.float()
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    scheduler = backbone.make_scheduler()
    scheduler.alphas_cumprod = scheduler.alphas_cumprod.to(device)
    unet.train()
    state = {"step": 0}

    def step() -> None:
        state["step"] += 1
        batch = draw_batch(0, "bench", "defect", state["step"], 0, pairs, cache, 1000)
        whole = cache.whole[batch.index, batch.variant]
        part = cache.part[batch.index, batch.variant]
        clean = torch.stack([whole, part], dim=1).flatten(0, 1).to(device)
        noise = batch.noise.flatten(0, 1).to(device)
        timesteps = batch.timesteps.repeat_interleave(2).to(device)
        noisy = scheduler.add_noise(clean, noise, timesteps)
        pred = unet(noisy, timesteps, embeds.repeat(pairs, 1, 1), return_dict=False)[0]
        loss = torch.nn.functional.mse_loss(pred.float(), noise.float())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        _sync()

    return step, params


def task_fit(args: dict[str, Any]) -> dict[str, Any]:
    """One fit step (pairs per step) vs one peft LoRA step on the same 2 x pairs samples, interleaved."""
    backbone, description = _setup(args)
    peft_unet = _second_unet(args, backbone)  # before the dual processors are installed on the original
    anogen_step, adapter = _anogen_step(backbone, args)
    peft_step, peft_params = _peft_step(peft_unet, backbone, args)
    timings = interleaved({"anogen_fit_step": anogen_step, "peft_lora_step": peft_step}, int(args["repeats"]),
                          warmup=int(args.get("warmup", 1)))
    return {"backbone": description, "pairs": args["pairs"], "samples": 2 * int(args["pairs"]), "rank": args["rank"],
            "saim_width": args.get("saim_width"), "timings": timings,
            "trainable": {"anogen": adapter.num_trainable(), "peft": sum(p.numel() for p in peft_params)}}


def task_speed(args: dict[str, Any]) -> dict[str, Any]:
    """synth, unet_step and fit in one process (one start-up, one backbone); fit last, as it trains the UNet."""
    fit_args = {**args, "pairs": args["fit_pairs"], "repeats": args["fit_repeats"]}
    return {
        "synth": _guard(task_synth, args),
        "unet_step": _guard(task_unet_step, {**args, "repeats": max(int(args["repeats"]), 2)}),
        "fit": _guard(task_fit, fit_args),
    }


def _guard(fn: Any, args: dict[str, Any]) -> dict[str, Any]:
    import traceback

    try:
        return fn(args)
    except Exception:  # one failed measurement must not lose the others; the report shows the error
        return {"error": traceback.format_exc()[-2000:]}


# ------------------------------------------------------------------------------------------------ memory


def task_memory(args: dict[str, Any]) -> dict[str, Any]:
    """Peak memory of one side alone (its own process): ``what`` = fit | peft | synth | pipeline."""
    import torch

    backbone, description = _setup(args)
    what = args["what"]
    loaded = rss_mb()
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    steps = int(args.get("calls", 2))
    if what in ("fit", "peft"):
        if what == "fit":
            step, _ = _anogen_step(backbone, args)
        else:
            step, _ = _peft_step(backbone.unet, backbone, args)
        for _ in range(steps):
            step()
    else:
        from anogen.records import AdapterRecord
        from anogen.synth import sample_pairs

        sc = _sample_config(args)
        pairs = int(args["pairs"])
        if what == "synth":
            adapter = _adapter(backbone, args["rank"], args.get("saim_width"))
            for _ in range(steps):
                sample_pairs(backbone, adapter, AdapterRecord.from_dict({}), list(range(pairs)), sc, device=_device())
        else:
            pipe = _pipeline(backbone, sc.sampler)
            size = backbone.resolution
            guided = sc.guidance > 1.0
            for _ in range(steps):
                pipe(prompt=[WHOLE, PART] * pairs, height=size, width=size, num_inference_steps=sc.steps,
                     guidance_scale=sc.guidance, negative_prompt=[""] * (2 * pairs) if guided else None,
                     output_type="np")
    _sync()
    return {"backbone": description, "what": what, "rss_after_load_mb": round(loaded, 1),
            "peak_rss_mb": round(peak_rss_mb(), 1), "gpu_peak_mb": gpu_peak_mb(),
            "seconds": round(time.perf_counter() - started, 2)}
