"""The reference recipe's model knobs: SAIM's default init, BCM's mixing-MLP width, the shared text-encoder LoRA
through save, load and sampling, and half-precision adapter files."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from anogen.config import AdapterConfig, SampleConfig
from anogen.model.adapter import load_adapter, save_adapter
from anogen.model.backbone import build_tiny
from anogen.model.dual import DualAdapter, dual_forward, encode_prompts
from anogen.records import read_adapter_record
from anogen.synth import sample_pairs

WHOLE, PART = "a vfx with sks", "sks"
FIRST_ATTN1 = "down_blocks.0.attentions.0.transformer_blocks.0.attn1"
RECORD = {"category": "bottle", "defect": "crack", "prompts": {"whole": WHOLE, "part": PART}, "seed": 7}
# Largest change of a sampled pixel (0-1 scale) when the adapter file is stored in fp16 instead of fp32: half of
# one uint8 level. Measured at 0.00025 on this tiny backbone (docs/fit.md, "Adapter size", for the toy backbone).
FP16_PIXEL_TOLERANCE = 0.5 / 255


@pytest.fixture(scope="module")
def backbone():
    return build_tiny(seed=0)  # our own copy: sampling installs adapters on it


def _inputs(backbone, pairs: int = 2):
    g = torch.Generator().manual_seed(0)
    size = backbone.unet.config.sample_size
    latents = torch.randn(2 * pairs, backbone.latent_channels, size, size, generator=g)
    t = torch.tensor([100, 700][:pairs]).repeat_interleave(2)
    emb = encode_prompts(backbone, [WHOLE, PART] * pairs)
    background = torch.randn(pairs, backbone.latent_channels, size, size, generator=g)
    return latents, t, emb, background


def _forward(backbone, adapter, *, grad: bool):
    unet = copy.deepcopy(backbone.unet)
    adapter.install(unet)
    latents, t, emb, background = _inputs(backbone)
    with torch.set_grad_enabled(grad):
        out = dual_forward(unet, adapter, latents, t, emb, background_latents=background if adapter.config.bcm
                           else None)
    return out.detach()


def test_saim_default_init_acts_from_the_first_step(backbone):
    latents, t, emb, _ = _inputs(backbone)
    with torch.no_grad():
        stock = backbone.unet(latents, t, emb, return_dict=False)[0]
    zero = DualAdapter.from_unet(backbone.unet, AdapterConfig(rank=4), seed=0)
    default = DualAdapter.from_unet(backbone.unet, AdapterConfig(rank=4, saim_init="default"), seed=0)
    torch.testing.assert_close(_forward(backbone, zero, grad=False), stock)
    assert (_forward(backbone, default, grad=False) - stock).abs().max() > 1e-3
    saim = default.processor(FIRST_ATTN1).saim
    channels = backbone.unet.get_submodule(FIRST_ATTN1).to_out[0].out_features
    # full width by default (as the reference: Linear(C, C) in and out), out-projection initialised like the rest
    assert saim.proj_in.weight.shape == (channels, channels) == saim.proj_out.weight.shape
    bound = channels**-0.5
    assert 0 < saim.proj_out.weight.abs().max() <= bound
    # up to proj_out both draw the same weights from the seed (the zero init draws nothing, so later layers differ)
    zero_saim = zero.processor(FIRST_ATTN1).saim
    for name in ("proj_in", "q", "k", "v"):
        assert torch.equal(getattr(zero_saim, name).weight, getattr(saim, name).weight), name
    assert not zero_saim.proj_out.weight.any()
    with pytest.raises(ValueError, match="saim_init"):
        DualAdapter.from_unet(backbone.unet, AdapterConfig(rank=4, saim_init="ones"), seed=0)  # type: ignore[arg-type]


@pytest.mark.parametrize("width", [8, 16, None], ids=["narrow-unfolded", "folded", "default-C"])
def test_bcm_mixing_mlp_width_and_fast_path(backbone, width):
    config = AdapterConfig(rank=4, bcm=True, bcm_width=width)
    adapter = DualAdapter.from_unet(backbone.unet, config, seed=0)
    bcm = adapter.processor(FIRST_ATTN1).bcm
    channels = backbone.unet.get_submodule(FIRST_ATTN1).to_q.in_features
    hidden = width or channels
    assert (bcm.fc1.in_features, bcm.fc1.out_features, bcm.fc2.out_features) == (channels, hidden, channels)
    assert float(bcm.alpha.detach()) == 0.0  # `a` starts at 0: a fresh BCM changes nothing
    with torch.no_grad():
        for name, param in adapter.named_parameters():
            if name.endswith("bcm.alpha"):
                param.fill_(0.5)
    # the no-grad fast path (folded or not, by width) equals the plain path with gradients on
    torch.testing.assert_close(_forward(backbone, adapter, grad=False), _forward(backbone, adapter, grad=True),
                               rtol=1e-4, atol=1e-5)
    # and an independent reference of the mix: (1 - a) h + a fc2(fc1(h_ref)) on the whole rows only
    h = torch.randn(4, 6, channels, generator=torch.Generator().manual_seed(3))
    ref = torch.randn(2, 6, channels, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        mixed = bcm.mix(h, ref)
        expected_whole = 0.5 * h[0::2] + 0.5 * bcm.fc2(bcm.fc1(ref))
    torch.testing.assert_close(mixed[0::2], expected_whole, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(mixed[1::2], h[1::2])


def _trained_text_lora(backbone, **config) -> DualAdapter:
    adapter = DualAdapter.from_backbone(
        backbone, AdapterConfig(rank=2, text_encoder_lora=True, text_encoder_rank=4, **config), seed=7
    )
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, param in adapter.named_parameters():
            if "lora_B" in name or name.endswith(".up"):
                param.copy_(torch.randn(param.shape, generator=g) * 0.2)
    return adapter


def test_text_encoder_lora_is_saved_reloaded_and_used_by_synth(backbone, tmp_path):
    stock = encode_prompts(backbone, [WHOLE, PART])
    fresh = DualAdapter.from_backbone(backbone, AdapterConfig(rank=2, text_encoder_lora=True), seed=7)
    with torch.no_grad():
        torch.testing.assert_close(encode_prompts(backbone, [WHOLE, PART], fresh), stock)  # fresh: unchanged
    adapter = _trained_text_lora(backbone)
    save_adapter(adapter, tmp_path, RECORD)
    from safetensors import safe_open

    with safe_open(str(tmp_path / "adapter.safetensors"), framework="pt") as f:
        te_keys = [k for k in f.keys() if k.startswith("text_encoder.")]
    # one LoRA for both branches: no whole/part key under text_encoder.
    assert te_keys and not any(".whole." in k or ".part." in k for k in te_keys)
    loaded, record = load_adapter(tmp_path, backbone)
    with torch.no_grad():
        trained = encode_prompts(backbone, [WHOLE, PART], adapter)
        reloaded = encode_prompts(backbone, [WHOLE, PART], loaded)
    torch.testing.assert_close(reloaded, trained)
    for row in (0, 1):  # both branches' prompts go through it
        assert (reloaded[row] - stock[row]).abs().max() > 1e-2

    # synth: the conditional rows the UNet receives are the LoRA'd embeddings, both branches of every pair
    seen = []

    def hook(module, args, kwargs):
        states = kwargs.get("encoder_hidden_states", args[2] if len(args) > 2 else None)
        seen.append(states.detach().clone())

    handle = backbone.unet.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        sample_pairs(backbone, loaded, record, [1, 2], SampleConfig(steps=1, guidance=2.0), output_type="float")
    finally:
        handle.remove()
    states = seen[0]  # [uncond pairs..., cond pairs...]
    cond = states[4:]
    torch.testing.assert_close(cond, reloaded.repeat(2, 1, 1))
    with torch.no_grad():
        uncond = encode_prompts(backbone, ["", ""], loaded)
    torch.testing.assert_close(states[:4], uncond.repeat(2, 1, 1))


def test_fp16_adapter_file_is_half_the_size_and_samples_within_tolerance(backbone, tmp_path):
    adapter = _trained_text_lora(backbone, bcm=False)
    with torch.no_grad():  # every weight non-trivial, like a trained adapter's
        g = torch.Generator().manual_seed(2)
        for param in adapter.parameters():
            param.add_(torch.randn(param.shape, generator=g) * 0.05)
    save_adapter(adapter, tmp_path / "fp32", RECORD)
    save_adapter(adapter, tmp_path / "fp16", RECORD, dtype="fp16")
    size32 = (tmp_path / "fp32" / "adapter.safetensors").stat().st_size
    size16 = (tmp_path / "fp16" / "adapter.safetensors").stat().st_size
    assert 0.45 < size16 / size32 < 0.55
    assert read_adapter_record(tmp_path / "fp16").raw["weights_dtype"] == "fp16"
    a32, record = load_adapter(tmp_path / "fp32", backbone)
    a16, _ = load_adapter(tmp_path / "fp16", backbone)
    assert all(p.dtype == torch.float32 for p in a16.parameters())  # cast back on load
    cfg = SampleConfig(steps=4, guidance=2.5)
    img32, part32 = sample_pairs(backbone, a32, record, [3, 4, 5], cfg, output_type="float")
    img16, part16 = sample_pairs(backbone, a16, record, [3, 4, 5], cfg, output_type="float")
    diff = max(np.abs(img32 - img16).max(), np.abs(part32 - part16).max())
    print(f"fp16 vs fp32 adapter: max pixel difference {diff:.6f}")
    assert diff <= FP16_PIXEL_TOLERANCE, diff
    with pytest.raises(ValueError, match="dtype"):
        save_adapter(adapter, tmp_path / "bf", RECORD, dtype="int8")


def test_text_encoder_lora_stays_fp32_on_a_half_precision_backbone():
    """A mixed-precision fit casts the backbone first; the adapter (text-encoder LoRA included) must stay fp32:
    GradScaler cannot unscale fp16 gradients, and bf16 weights would lose the small updates."""
    half = build_tiny(seed=0)
    for dtype in (torch.float16, torch.bfloat16):
        half.text_encoder.to(dtype)
        half.unet.to(dtype)
        adapter = DualAdapter.from_backbone(half, AdapterConfig(rank=2, text_encoder_lora=True), seed=0)
        assert {p.dtype for p in adapter.parameters()} == {torch.float32}, dtype
    with torch.autocast("cpu", dtype=torch.bfloat16):  # the bf16 backbone, as a bf16 fit runs it
        emb = encode_prompts(half, [WHOLE, PART], adapter)
    emb.float().sum().backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in adapter.text_encoder_lora.parameters())
