"""Pretrain the ``toy`` backbone on the toy world: ``python -m anogen.toy.pretrain --out DIR``.

Recipe (one command, CPU-friendly; about 1.5 hours on 2 shared cores, see docs/toy.md):

1. **Autoencoder.** A diffusers ``AutoencoderKL`` with 3 blocks (4x downsampling: 64 px -> 16x16x4 latents),
   trained on L1 + MSE + a tiny KL term on toy normals, part canvases, marked normals and *generic* marks of
   any colour (thin lines and discs included: an autoencoder must reconstruct whatever it is shown, and the
   UNet never sees these images). Its ``scaling_factor`` is set to 1 / std of the latents, as SD's is.
   Then a decoder-only fine-tune (:func:`~anogen.toy.training.finetune_decoder`) that weighs pixels outside
   the normals' band more.
2. **Text encoder.** A small ``CLIPTextModel`` (hidden size 64) with random, frozen weights, seeded: distinct
   prompts give distinct embeddings, which is all the cross-attention needs to tell the domains apart, and
   the fitted adapters later learn their own prompts through LoRA.
3. **UNet.** A ~4M-parameter ``UNet2DConditionModel`` on 16x16 latents, epsilon prediction with SD's
   scaled-linear DDPM schedule, 10 % prompt dropout (for classifier-free guidance), EMA of the weights.
   Domains, each under its own prompt (:data:`anogen.toy.data.PROMPTS`): object normals, texture normals,
   part canvases (grey with generic marks), and normals carrying generic marks.

Stopping measure: a fixed step budget (``--unet-steps``, with a wall-clock cap ``--max-minutes`` for shared
machines). Every ``--eval-every`` steps the held-out denoising loss of the EMA weights is logged, on held-out
images with fixed noise and fixed timesteps spread over [0, 1000); the final value goes into ``recipe.json``.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from anogen.io import sha256_file, write_json_atomic
from anogen.seeding import derive_seed
from anogen.toy.data import PROMPTS
from anogen.toy.images import RESOLUTION, _generic_marks_image, build_pool, to_tensor
from anogen.toy.measures import measure_vae, sample, save_grid
from anogen.toy.training import DOMAIN_WEIGHTS, encode_prompts, finetune_decoder, train_unet, train_vae

logger = logging.getLogger("anogen.toy.pretrain")


def toy_configs(resolution: int = RESOLUTION) -> dict[str, dict[str, Any]]:
    """Configs of the toy backbone: 4x AutoencoderKL, ~4M-parameter UNet, hidden-64 CLIP text encoder."""
    from anogen.model.small_configs import small_text_encoder_config, tiny_configs

    base = tiny_configs()
    hidden = 64
    return {
        "vae": dict(
            sample_size=resolution,
            in_channels=3,
            out_channels=3,
            latent_channels=4,
            block_out_channels=(32, 64, 64),
            down_block_types=("DownEncoderBlock2D",) * 3,
            up_block_types=("UpDecoderBlock2D",) * 3,
            layers_per_block=1,
            norm_num_groups=16,
            scaling_factor=1.0,
        ),
        "unet": dict(
            sample_size=resolution // 4,
            in_channels=4,
            out_channels=4,
            block_out_channels=(48, 96, 96),
            layers_per_block=1,
            down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
            cross_attention_dim=hidden,
            attention_head_dim=8,
            norm_num_groups=16,
        ),
        "text_encoder": small_text_encoder_config(hidden_size=hidden),
        "scheduler": dict(base["scheduler"]),
    }


# ---------------------------------------------------------------------------------------------- main


def file_hashes(folder: Path) -> dict[str, str]:
    """sha256 of every file of a backbone folder except recipe.json, by relative path."""
    return {
        str(p.relative_to(folder)): sha256_file(p)
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != "recipe.json"
    }


def pretrain(args: argparse.Namespace) -> Path:
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from anogen.model.backbone import Backbone, module_hash, save_backbone
    from anogen.model.tokenizer import build_char_tokenizer

    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    # Checkpoints and the sample grid go beside the asset, so OUT holds exactly what ships.
    work = Path(args.work) if args.work else out.with_name(out.name + "-work")
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    configs = toy_configs()
    seed = args.seed

    torch.manual_seed(derive_seed("toy-init", seed, "vae") % (2**31))
    vae = AutoencoderKL(**configs["vae"])
    torch.manual_seed(derive_seed("toy-init", seed, "text") % (2**31))
    text_encoder = CLIPTextModel(CLIPTextConfig(**configs["text_encoder"])).eval().requires_grad_(False)
    torch.manual_seed(derive_seed("toy-init", seed, "unet") % (2**31))
    unet = UNet2DConditionModel(**configs["unet"])
    tokenizer = build_char_tokenizer(tempfile.mkdtemp(prefix="anogen-toy-tok-"))
    n_params = {name: sum(p.numel() for p in m.parameters()) for name, m in
                (("unet", unet), ("vae", vae), ("text_encoder", text_encoder))}
    logger.info("parameters %s", n_params)

    # ---- data pools (deterministic by seed)
    pools = {d: build_pool(d, seed, int(args.pool * DOMAIN_WEIGHTS[d] / max(DOMAIN_WEIGHTS.values())))
             for d in DOMAIN_WEIGHTS}
    gen = np.random.default_rng(derive_seed("vae-extra", seed))
    extra = np.stack([_generic_marks_image(gen, seed, i, RESOLUTION) for i in range(args.pool)])
    logger.info("pools %s + %d generic-mark images (%.0f s)", {k: len(v) for k, v in pools.items()}, len(extra),
                time.time() - t0)

    # ---- autoencoder
    vae_images = np.concatenate(list(pools.values()))
    vae_figures = train_vae(vae, vae_images, extra, steps=args.vae_steps, batch=args.vae_batch, lr=args.vae_lr,
                            seed=seed, max_seconds=args.vae_minutes * 60)
    vae.requires_grad_(False)
    vae_figures.update({f"joint_{k}": v for k, v in measure_vae(vae, seed).items()})
    if args.decoder_steps > 0:
        vae_figures.update(finetune_decoder(vae, vae_images, extra, steps=args.decoder_steps, batch=args.vae_batch,
                                            lr=args.decoder_lr, seed=seed, max_seconds=args.decoder_minutes * 60))
    vae_figures.update(measure_vae(vae, seed))
    logger.info("vae figures %s", vae_figures)

    # ---- latents of the pools; SD-style scaling so latents have unit variance
    latents: dict[str, tuple[Any, Any]] = {}
    with torch.no_grad():
        for name, images in pools.items():
            means, stds = [], []
            for i in range(0, len(images), 64):
                dist = vae.encode(to_tensor(images[i:i + 64])).latent_dist
                means.append(dist.mean)
                stds.append(dist.std)
            latents[name] = (torch.cat(means), torch.cat(stds))
    scaling = float(1.0 / torch.cat([m for m, _ in latents.values()]).std())
    vae.register_to_config(scaling_factor=scaling)
    latents = {k: (m * scaling, s * scaling) for k, (m, s) in latents.items()}
    logger.info("scaling factor %.4f (%.0f s)", scaling, time.time() - t0)

    embeds = {name: e for name, e in zip(
        [*DOMAIN_WEIGHTS, ""], encode_prompts(tokenizer, text_encoder, [PROMPTS[d] for d in DOMAIN_WEIGHTS] + [""]),
        strict=True)}

    # ---- held-out set: fresh images per domain, fixed noise and timesteps
    g = torch.Generator().manual_seed(derive_seed("held-out", seed) % (2**31))
    ho_x, ho_c = [], []
    for name in DOMAIN_WEIGHTS:
        imgs = build_pool(name, seed + 777, 16)
        with torch.no_grad():
            ho_x.append(vae.encode(to_tensor(imgs)).latent_dist.mean * scaling)
        ho_c.extend([embeds[name]] * 16)
    ho_x = torch.cat(ho_x)
    held_out = (ho_x, torch.randn(ho_x.shape, generator=g),
                torch.linspace(0, 999, len(ho_x)).round().long()[torch.randperm(len(ho_x), generator=g)],
                torch.stack(ho_c))

    def assemble(unet_module: Any) -> Backbone:
        return Backbone(unet=unet_module, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
                        scheduler_config=configs["scheduler"], source="toy", content_hash="")

    def checkpoint(ema_unet: Any, record: dict[str, Any]) -> None:
        save_backbone(assemble(ema_unet), work / "checkpoint", fp16=True)
        write_json_atomic(work / "checkpoint" / "progress.json", record)

    ema, unet_figures = train_unet(
        unet, latents, embeds, held_out, configs["scheduler"], steps=args.unet_steps, batch=args.batch,
        lr=args.lr, ema_decay=args.ema_decay, seed=seed, max_seconds=args.max_minutes * 60 - (time.time() - t0),
        eval_every=args.eval_every, checkpoint=checkpoint,
    )

    # ---- write the asset: fp16 EMA weights in the SD-1.x diffusers layout
    backbone = assemble(ema)
    save_backbone(backbone, out, fp16=True)
    wall = round(time.time() - t0, 1)
    # Samples of the base for each prompt, from the fp16 files as shipped.
    from anogen.model.backbone import load_folder

    shipped = load_folder(out, source="toy")
    rows = [sample(shipped, [PROMPTS[p]] * 8, steps=25, seed=s) for p, s in
            (("object", 1), ("texture", 2), ("part", 3), ("object_marked", 4), ("texture_marked", 5))]
    save_grid(rows, work / "samples.png")
    recipe = {
        "recipe": "python -m anogen.toy.pretrain " + " ".join(args.argv),
        "data_seed": seed,
        "prompts": {d: PROMPTS[d] for d in DOMAIN_WEIGHTS},
        "domain_weights": DOMAIN_WEIGHTS,
        "pool_sizes": {k: len(v) for k, v in pools.items()},
        "parameters": n_params,
        "configs": {k: {kk: list(vv) if isinstance(vv, tuple) else vv for kk, vv in v.items()}
                    for k, v in configs.items()},
        "scaling_factor": scaling,
        "batch": args.batch,
        "lr": args.lr,
        "ema_decay": args.ema_decay,
        "threads": args.threads,
        "wall_seconds": wall,
        "torch": torch.__version__,
        "module_hash_fp32": module_hash(backbone),
        **vae_figures,
        **{k: v for k, v in unet_figures.items()},
        "stopping": "fixed step budget (unet_steps) with a wall-clock cap; held-out EMA denoising loss logged",
    }
    recipe["sha256"] = file_hashes(out)
    write_json_atomic(out / "recipe.json", recipe)
    logger.info("done in %.0f s -> %s", time.time() - t0, out)
    return out


def main(argv: list[str] | None = None) -> None:
    import sys

    parser = argparse.ArgumentParser(prog="python -m anogen.toy.pretrain", description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="output folder (a diffusers backbone folder)")
    parser.add_argument("--work", default=None, help="checkpoints and sample grid (default: OUT-work)")
    parser.add_argument("--seed", type=int, default=0, help="data and init seed")
    parser.add_argument("--pool", type=int, default=1600, help="images per main domain in the training pool")
    parser.add_argument("--vae-steps", type=int, default=4000)
    parser.add_argument("--vae-batch", type=int, default=16)
    parser.add_argument("--vae-lr", type=float, default=1e-3)
    parser.add_argument("--vae-minutes", type=float, default=12.0, help="wall-clock cap of the autoencoder phase")
    parser.add_argument("--decoder-steps", type=int, default=4000, help="decoder-only fine-tune (0: none)")
    parser.add_argument("--decoder-lr", type=float, default=3e-4)
    parser.add_argument("--decoder-minutes", type=float, default=27.0, help="wall-clock cap of the decoder phase")
    parser.add_argument("--unet-steps", type=int, default=6000)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--lr", type=float, default=4e-4)
    parser.add_argument("--ema-decay", type=float, default=0.999)
    parser.add_argument("--eval-every", type=int, default=200)
    parser.add_argument("--max-minutes", type=float, default=95.0, help="wall-clock cap of the whole run")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (1 on a shared machine: a starved second thread only waits)")
    args = parser.parse_args(argv)
    args.argv = list(argv if argv is not None else sys.argv[1:])
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    pretrain(args)


if __name__ == "__main__":
    main()
