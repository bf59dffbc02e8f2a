"""The peak-memory estimate by part (``anogen fit --dry-run``) and the smallest GPU each recipe fits on.

The estimate against a measured peak is ``python -m bench.memory`` (minutes at SD-1.5 size; docs/fit.md)."""

from __future__ import annotations

import json

import pytest
import torch

from anogen.config import resolve
from anogen.fit import estimate_peak_bytes
from anogen.memory import GPU_SIZES_GIB, PeakEstimate, estimate_peak

GIB = 2**30


def test_parts_add_up_and_match_the_total_fit_reports():
    kwargs = dict(trainable=1_000_000, frozen=50_000_000, resolution=256, vae_scale_factor=8, batch_size=2,
                  mixed_precision="bf16", gradient_checkpointing=True, bcm=True)
    unet = {"block_out_channels": (320, 640, 1280, 1280), "layers_per_block": 2}
    parts = estimate_peak(unet, **kwargs)
    assert parts.weights == 50_000_000 * 2 and parts.adapter == 16_000_000  # bf16 weights; fp32 w + grad + 2 moments
    # activations: 200 x 2 bytes x (2 pairs x 3 rows) x 32 x 32 latent pixels x channel sum x 0.3 (checkpointing)
    channel_sum = 320 * 3 + 640 * 3 / 4 + 1280 * 3 / 16 + 1280 * 3 / 64
    assert parts.activations == int(200 * 2 * 6 * 32 * 32 * channel_sum * 0.3)
    assert parts.total == parts.weights + parts.adapter + parts.activations + parts.overhead
    assert estimate_peak_bytes(unet, **kwargs) == parts.total


def test_smallest_gpu():
    assert PeakEstimate(10 * GIB, 0, 0, 0).smallest_gpu_gib() == 12  # 10 GiB + 0.5 GiB CUDA context
    assert PeakEstimate(int(11.6 * GIB), 0, 0, 0).smallest_gpu_gib() == 16
    assert PeakEstimate(200 * GIB, 0, 0, 0).smallest_gpu_gib() is None
    assert list(GPU_SIZES_GIB) == sorted(GPU_SIZES_GIB)


@pytest.fixture(scope="module")
def sd15_counts():
    """SD-1.5's frozen parameters and each recipe's adapter size, counted on the meta device (no memory)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from anogen.model.dual import DualAdapter
    from bench.common import SD15_TEXT, SD15_UNET, SD15_VAE

    with torch.device("meta"):
        unet, vae = UNet2DConditionModel(**SD15_UNET), AutoencoderKL(**SD15_VAE)
        text = CLIPTextModel(CLIPTextConfig(**SD15_TEXT, vocab_size=49408))
    frozen = sum(p.numel() for m in (unet, vae, text) for p in m.parameters())
    trainable = {}
    for recipe in ("reference", "fast"):
        config = resolve("mvtec/bottle", recipe=recipe).adapter
        with torch.device("meta"):
            adapter = DualAdapter.from_unet(unet, config, text_encoder=text if config.text_encoder_lora else None)
        trainable[recipe] = adapter.num_trainable()
    return dict(unet.config), frozen, trainable


@pytest.mark.parametrize(
    "recipe,precision,checkpointing,gpu",
    [("reference", "bf16", True, 12), ("reference", "bf16", False, 24), ("reference", "no", False, 48),
     ("fast", "bf16", True, 12), ("fast", "no", True, 24)],
)
def test_smallest_gpu_per_recipe_at_sd15(sd15_counts, recipe, precision, checkpointing, gpu):
    unet, frozen, trainable = sd15_counts
    assert 1.0e9 < frozen < 1.1e9 and trainable["reference"] > 2 * trainable["fast"]
    estimate = estimate_peak(unet, trainable=trainable[recipe], frozen=frozen, resolution=512, vae_scale_factor=8,
                             batch_size=2, mixed_precision=precision, gradient_checkpointing=checkpointing, bcm=True)
    assert estimate.smallest_gpu_gib() == gpu  # the table in docs/fit.md, "Memory"


def test_dry_run_prints_the_breakdown(tmp_path):
    from typer.testing import CliRunner

    from anogen.cli.app import app
    from tests.test_train import SIZE, write_toy_category

    data = write_toy_category(tmp_path / "data")
    args = ["fit", str(data), "--backbone", "tiny", "--bcm", "off", "--resolution", str(SIZE), "--rank", "4",
            "--out", str(tmp_path / "runs"), "--dry-run"]
    result = CliRunner().invoke(app, [*args, "--json"])
    assert result.exit_code == 0, result.output
    plan = json.loads(result.stdout)["plan"]
    parts = plan["estimated_peak_parts"]
    assert parts["total"] == plan["estimated_peak_bytes"]
    assert parts["weights"] + parts["adapter_and_optimizer"] + parts["activations"] + parts["overhead"] == parts[
        "total"]
    assert parts["smallest_gpu_gib"] == 8
    text = CliRunner().invoke(app, args).stdout
    assert "by part: weights" in text and "smallest GPU it fits on: 8 GB" in text
