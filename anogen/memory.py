"""Peak-memory estimate of one ``anogen fit`` process, broken down by part, and the smallest GPU it fits on.

The formula (docs/fit.md, "Memory"): frozen weights (2 or 4 bytes per parameter) + adapter (16 bytes per trainable
parameter: fp32 weight, gradient, two AdamW moments) + activations (``ACTIVATION_FACTOR`` x bytes per element x UNet
rows x latent pixels x sum_i ch_i (layers_per_block + 1) / 4^i; x ``CHECKPOINTING_FACTOR`` with gradient
checkpointing; rows = 2 per pair, 3 with BCM's reference pass) + 10 % overhead. ``bench/memory.py`` checks it against
a measured peak. No torch here: the dry run reads it without a model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# Activation memory per UNet row, in units of (latent pixels x the channel sum below x bytes per element);
# calibrated so that SD-1.5 at 512 px, fp16, one row, no checkpointing, comes to ~3 GB (docs/fit.md).
ACTIVATION_FACTOR = 200.0
CHECKPOINTING_FACTOR = 0.3
OVERHEAD = 0.1
# Common GPU memory sizes in GiB, smallest first; a process also needs ~0.5 GiB of CUDA context.
GPU_SIZES_GIB = (8, 12, 16, 24, 32, 40, 48, 80, 94, 141)
CUDA_CONTEXT_GIB = 0.5


@dataclass(frozen=True)
class PeakEstimate:
    """Estimated peak bytes of one training process, by part."""

    weights: int
    adapter: int
    activations: int
    overhead: int

    @property
    def total(self) -> int:
        return self.weights + self.adapter + self.activations + self.overhead

    def smallest_gpu_gib(self) -> int | None:
        """The smallest common GPU size (GiB) this fits on with the CUDA context, or ``None`` above 141 GiB."""
        need = self.total / 2**30 + CUDA_CONTEXT_GIB
        return next((size for size in GPU_SIZES_GIB if size >= need), None)

    def to_dict(self) -> dict[str, Any]:
        return {"weights": self.weights, "adapter_and_optimizer": self.adapter, "activations": self.activations,
                "overhead": self.overhead, "total": self.total, "smallest_gpu_gib": self.smallest_gpu_gib()}


def estimate_peak(
    unet_config: dict[str, Any],
    *,
    trainable: int,
    frozen: int,
    resolution: int,
    vae_scale_factor: int,
    batch_size: int,
    mixed_precision: str,
    gradient_checkpointing: bool,
    bcm: bool,
) -> PeakEstimate:
    """The estimate of one training process (see the module docstring), by part."""
    half = mixed_precision in ("fp16", "bf16")
    weight_bytes = frozen * (2 if half else 4)
    adapter_bytes = trainable * 16
    latent = resolution // vae_scale_factor
    channels = unet_config.get("block_out_channels", (320, 640, 1280, 1280))
    layers = unet_config.get("layers_per_block", 2)
    layers = layers if isinstance(layers, int) else max(layers)
    channel_sum = sum(c * (layers + 1) / 4**i for i, c in enumerate(channels))
    rows = batch_size * (3 if bcm else 2)
    activations = ACTIVATION_FACTOR * (2 if half else 4) * rows * latent * latent * channel_sum
    if gradient_checkpointing:
        activations *= CHECKPOINTING_FACTOR
    base = weight_bytes + adapter_bytes + activations
    return PeakEstimate(int(weight_bytes), int(adapter_bytes), int(activations), int(OVERHEAD * base))
