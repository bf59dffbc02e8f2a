"""What a fit will cost, said before it starts (``anogen fit --dry-run``): time, parameters and peak memory.

Torch is imported only inside the parameter count; the time estimate needs none.

Time: measured when an adapter folder of the plan already logged steps (a resume), else a rough guess from the
UNet's config: seconds per training row (forward + backward) = a fixed overhead + ``K_CONV x`` the convolution and
projection work (``latent pixels x sum_i c_i^2 (layers + 1) / 4^i``) + ``K_ATTN x`` the attention work
(``sum over attention levels of tokens_i^2 x c_i x (layers + 1)``). The constants were fitted on this project's
2-core CPU to the toy backbone at 64 px, the tiny one at 32 and 64 px and SD-1.5's architecture at 256 px
(docs/fit.md); the GPU figures are assumptions. Good to a factor of 2-3: it tells seconds from hours.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from anogen.config import ResolvedConfig

logger = logging.getLogger(__name__)


# CPU, seconds: per training row, per unit of convolution work, per unit of attention work.
CPU_ROW_OVERHEAD_S = 0.02
CPU_K_CONV = 1.6e-9
CPU_K_ATTN = 2.3e-9
# A data-centre GPU against those two cores: assumed, not measured (no GPU was at hand).
GPU_SPEEDUP = 300.0
GPU_ROW_OVERHEAD_S = 0.005


def unet_work(unet_config: dict[str, Any], *, resolution: int, vae_scale_factor: int) -> tuple[float, float]:
    """(convolution work, attention work) of one UNet row at ``resolution``, in the units of the constants."""
    latent = resolution // max(vae_scale_factor, 1)
    channels = list(unet_config.get("block_out_channels", (320, 640, 1280, 1280)))
    layers = unet_config.get("layers_per_block", 2)
    layers = layers if isinstance(layers, int) else max(layers)
    default_kinds = ["CrossAttnDownBlock2D"] * (len(channels) - 1) + ["DownBlock2D"]  # SD-1.x
    kinds = list(unet_config.get("down_block_types") or default_kinds)
    conv = attn = 0.0
    for i, c in enumerate(channels):
        pixels = (latent / 2**i) ** 2
        conv += pixels * c * c * (layers + 1)
        if i < len(kinds) and "Attn" in str(kinds[i]):
            attn += pixels * pixels * c * (layers + 1)
    return conv, attn


def estimate_fit_seconds(
    unet_config: dict[str, Any],
    *,
    resolution: int,
    vae_scale_factor: int,
    rows_per_step: int,
    steps: int,
    device: str,
    measured_s_per_step: float | None = None,
) -> tuple[float, str]:
    """(seconds for ``steps`` optimiser steps, ``"measured"`` or ``"rough guess"``).

    Args:
        unet_config (`dict`): the UNet's config (``block_out_channels``, ``layers_per_block``).
        resolution (`int`): training resolution in pixels.
        vae_scale_factor (`int`): the autoencoder's downsampling factor.
        rows_per_step (`int`): UNet rows per optimiser step (2 per pair, 3 with BCM, times accumulation).
        steps (`int`): optimiser steps still to run, over every adapter of the plan.
        device (`str`): ``cpu`` or ``cuda``.
        measured_s_per_step (`float`, *optional*): seconds per step logged by an earlier run of the same plan.
    """
    if measured_s_per_step is not None:
        return round(steps * measured_s_per_step, 1), "measured"
    conv, attn = unet_work(unet_config, resolution=resolution, vae_scale_factor=vae_scale_factor)
    work_s = CPU_K_CONV * conv + CPU_K_ATTN * attn
    if device.startswith("cuda"):
        per_row = GPU_ROW_OVERHEAD_S + work_s / GPU_SPEEDUP
    else:
        per_row = CPU_ROW_OVERHEAD_S + work_s
    return round(steps * rows_per_step * per_row, 1), "rough guess"


def measured_s_per_step(folders: Sequence[Path]) -> float | None:
    """Mean seconds per step over the ``train_log.jsonl`` of these adapter folders, or ``None``.

    Only consecutive logged steps of one run count (``elapsed_s`` restarts at every resume).
    """
    total_s = 0.0
    total_steps = 0
    for folder in folders:
        path = Path(folder) / "train_log.jsonl"
        if not path.is_file():
            continue
        previous: tuple[int, float] | None = None
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                row = json.loads(line)
                step, elapsed = int(row["step"]), float(row["elapsed_s"])
            except (ValueError, KeyError, TypeError):
                previous = None
                continue
            if previous is not None and step == previous[0] + 1 and elapsed > previous[1]:
                total_s += elapsed - previous[1]
                total_steps += 1
            previous = (step, elapsed)
    return total_s / total_steps if total_steps else None


# ------------------------------------------------------------------------------------ parameters and memory


def _count_parameters(configs: dict[str, dict[str, Any]], config: ResolvedConfig) -> tuple[int | None, int]:
    """(trainable adapter parameters, frozen backbone parameters), counted on the meta device (no memory)."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    def clean(cfg: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in cfg.items() if not k.startswith("_")}

    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(clean(configs["unet"]))
        vae = AutoencoderKL.from_config(clean(configs["vae"]))
        te_cfg = {k: v for k, v in clean(configs["text_encoder"]).items() if k != "architectures"}
        text_encoder = CLIPTextModel(CLIPTextConfig(**te_cfg))
    frozen = sum(p.numel() for m in (unet, vae, text_encoder) for p in m.parameters())
    trainable: int | None
    try:
        from anogen.model.dual import DualAdapter

        with torch.device("meta"):
            adapter = DualAdapter.from_unet(
                unet, config.adapter, text_encoder=text_encoder if config.adapter.text_encoder_lora else None
            )
        trainable = int(adapter.num_trainable())
    except Exception as exc:  # noqa: BLE001 - the count is informative; a dry run must not fail on it
        logger.debug("cannot count adapter parameters on the meta device: %s", exc)
        trainable = None
    return trainable, int(frozen)


def estimate_peak_bytes(unet_config: dict[str, Any], **sizes: Any) -> int:
    """Estimated peak memory of one training process, in bytes: :func:`anogen.memory.estimate_peak`'s total
    (weights + adapter and optimizer state + activations + 10 % overhead; formula in docs/fit.md), with its
    keyword arguments (trainable, frozen, resolution, vae_scale_factor, batch_size, mixed_precision,
    gradient_checkpointing, bcm)."""
    from anogen.memory import estimate_peak

    return estimate_peak(unet_config, **sizes).total
