"""The dual processor against independent references: stock diffusers, peft LoRA, a hand-written SAIM."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch

from anogen.config import AdapterConfig
from anogen.model.dual import DualAdapter, dual_forward, encode_prompts
from anogen.model.processor import DualState
from anogen.model.saim import SAIM

WHOLE, PART = "a vfx with sks", "sks"
FIRST_ATTN1 = "down_blocks.0.attentions.0.transformer_blocks.0.attn1"


def _inputs(backbone, pairs: int = 2, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    size = backbone.unet.config.sample_size
    latents = torch.randn(2 * pairs, backbone.latent_channels, size, size, generator=g)
    t = torch.tensor([100, 700, 400, 50][:pairs]).repeat_interleave(2)
    emb = encode_prompts(backbone, [WHOLE, PART] * pairs)
    background = torch.randn(pairs, backbone.latent_channels, size, size, generator=g)
    return latents, t, emb, background


def _dual(backbone, config: AdapterConfig, seed: int = 0):
    unet = copy.deepcopy(backbone.unet)
    adapter = DualAdapter.from_unet(unet, config, seed=seed)
    adapter.install(unet)
    return unet, adapter


def _randomise(adapter: DualAdapter, seed: int = 1, *, scale: float = 0.3) -> None:
    """Make every zero-initialised weight (LoRA up, SAIM out, BCM gate) non-zero."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in adapter.named_parameters():
            if name.endswith(".up") or ".proj_out." in name:
                param.copy_(torch.randn(param.shape, generator=g) * scale)
            elif name.endswith("bcm.alpha"):
                param.fill_(0.5)


def _stock(unet, latents, t, emb):
    with torch.no_grad():
        return unet(latents, t, emb, return_dict=False)[0]


@pytest.mark.parametrize(
    "config",
    [AdapterConfig(rank=4), AdapterConfig(rank=4, coupling="none"), AdapterConfig(rank=4, bcm=True, saim_width=16)],
    ids=["saim", "none", "saim+bcm"],
)
def test_fresh_adapter_reproduces_the_stock_unet_per_branch(tiny_backbone, config):
    latents, t, emb, background = _inputs(tiny_backbone)
    unet, adapter = _dual(tiny_backbone, config)
    with torch.no_grad():
        out = dual_forward(unet, adapter, latents, t, emb, background_latents=background if config.bcm else None)
    for branch in (0, 1):
        expected = _stock(tiny_backbone.unet, latents[branch::2], t[branch::2], emb[branch::2])
        torch.testing.assert_close(out[branch::2], expected, atol=1e-5, rtol=1e-5)


def test_uninstall_restores_the_stock_unet(tiny_backbone):
    latents, t, emb, _ = _inputs(tiny_backbone)
    unet, adapter = _dual(tiny_backbone, AdapterConfig(rank=4))
    _randomise(adapter)
    assert not torch.allclose(_stock(unet, latents, t, emb), _stock(tiny_backbone.unet, latents, t, emb), atol=1e-3)
    adapter.uninstall(unet)
    assert type(next(iter(unet.attn_processors.values()))).__name__ == "AttnProcessor2_0"
    assert not any("processor" in name for name, _ in unet.named_parameters())
    torch.testing.assert_close(_stock(unet, latents, t, emb), _stock(tiny_backbone.unet, latents, t, emb))
    with pytest.raises(ValueError, match="not installed"):
        dual_forward(unet, adapter, latents, t, emb)


def test_one_processor_per_attention_module_sized_from_the_module(tiny_backbone):
    unet, adapter = _dual(tiny_backbone, AdapterConfig(rank=3, bcm=True))
    modules = dict(unet.named_modules())
    names = [n.removesuffix(".processor") for n in unet.attn_processors]
    assert sorted(adapter.layers) == sorted(names)
    assert {n.rsplit(".", 1)[1] for n in names} == {"attn1", "attn2"}
    for layer in names:
        attn, proc = modules[layer], adapter.processor(layer)
        assert unet.attn_processors[layer + ".processor"] is proc
        assert proc.lora["to_k"].down.shape == (2, 3, attn.to_k.in_features)
        assert proc.lora["to_out"].up.shape == (2, attn.to_out[0].out_features, 3)
        assert proc.saim.proj_in.in_features == attn.to_out[0].out_features
        assert (proc.bcm is not None) == layer.endswith("attn1")
    assert all(p.dtype == torch.float32 and p.requires_grad for p in adapter.trainable_parameters())
    assert adapter.num_trainable() == sum(p.numel() for p in adapter.parameters())
    unet.requires_grad_(False)  # freezing after install reaches the adapter's weights: refused, not silent
    with pytest.raises(ValueError, match="frozen"):
        adapter.trainable_parameters()


def test_seeded_init_is_deterministic_and_leaves_the_global_rng_alone(tiny_backbone):
    state = torch.random.get_rng_state()
    config = AdapterConfig(rank=4, bcm=True, text_encoder_lora=True)
    a = DualAdapter.from_unet(tiny_backbone.unet, config, text_encoder=tiny_backbone.text_encoder, seed=3)
    b = DualAdapter.from_unet(tiny_backbone.unet, config, text_encoder=tiny_backbone.text_encoder, seed=3)
    c = DualAdapter.from_unet(tiny_backbone.unet, config, text_encoder=tiny_backbone.text_encoder, seed=4)
    assert torch.equal(torch.random.get_rng_state(), state)
    sa, sb, sc = a.adapter_state_dict(), b.adapter_state_dict(), c.adapter_state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    down = f"unet.{FIRST_ATTN1}.lora.to_q.whole.down"
    assert not torch.equal(sa[down], sc[down])
    # down ~ N(0, 1/r): the empirical std of all down-projections is close to 1/r
    downs = torch.cat([v.flatten() for k, v in sa.items() if k.endswith(".down")])
    assert abs(downs.std().item() - 0.25) < 0.01


def test_per_branch_lora_equals_peft_on_the_stock_unet(tiny_backbone):
    from peft import LoraConfig, inject_adapter_in_model

    config = AdapterConfig(rank=4, alpha=8.0, coupling="none")
    latents, t, emb, _ = _inputs(tiny_backbone, pairs=2)
    unet, adapter = _dual(tiny_backbone, config)
    _randomise(adapter)
    with torch.no_grad():
        out = dual_forward(unet, adapter, latents, t, emb)
    names = {"to_q": "to_q", "to_k": "to_k", "to_v": "to_v", "to_out": "to_out.0"}
    for branch in (0, 1):
        reference = copy.deepcopy(tiny_backbone.unet)
        with torch.random.fork_rng(devices=[]):
            peft_config = LoraConfig(r=4, lora_alpha=8, target_modules=list(names.values()), lora_dropout=0.0)
            inject_adapter_in_model(peft_config, reference)
        with torch.no_grad():
            for layer in adapter.layers:
                for proj, path in names.items():
                    target = reference.get_submodule(f"{layer}.{path}")
                    target.lora_A["default"].weight.copy_(adapter.processor(layer).lora[proj].down[branch])
                    target.lora_B["default"].weight.copy_(adapter.processor(layer).lora[proj].up[branch])
        expected = _stock(reference, latents[branch::2], t[branch::2], emb[branch::2])
        base = _stock(tiny_backbone.unet, latents[branch::2], t[branch::2], emb[branch::2])
        assert (expected - base).abs().max() > 1e-2  # the LoRA matters
        torch.testing.assert_close(out[branch::2], expected, atol=1e-5, rtol=1e-5)


def test_saim_equals_a_hand_written_two_token_attention():
    g = torch.Generator().manual_seed(0)
    channels, width, pairs, tokens = 12, 6, 3, 5
    saim = SAIM(channels, width, g)
    with torch.no_grad():
        for param in saim.parameters():
            param.copy_(torch.randn(param.shape, generator=g) * 0.5)
    x = torch.randn(2 * pairs, tokens, channels, generator=g)
    with torch.no_grad():
        got = saim(x)

    expected = torch.empty_like(x)
    W = {name: (getattr(saim, name).weight, getattr(saim, name).bias) for name in ("proj_in", "q", "k", "v")}
    W["proj_out"] = (saim.proj_out.weight, saim.proj_out.bias)
    gamma, beta = saim.norm.weight, saim.norm.bias
    with torch.no_grad():
        for p in range(pairs):
            for n in range(tokens):
                seq = [x[2 * p, n], x[2 * p + 1, n]]  # the (whole, part) tokens of this position
                normed = [(s - s.mean()) / torch.sqrt(s.var(unbiased=False) + saim.norm.eps) for s in seq]
                normed = [s * gamma + beta for s in normed]
                h = [W["proj_in"][0] @ s + W["proj_in"][1] for s in normed]
                q = [W["q"][0] @ s + W["q"][1] for s in h]
                k = [W["k"][0] @ s + W["k"][1] for s in h]
                v = [W["v"][0] @ s + W["v"][1] for s in h]
                for i in range(2):
                    scores = [torch.dot(q[i], k[j]) / width**0.5 for j in range(2)]
                    weights = [torch.exp(s) / (torch.exp(scores[0]) + torch.exp(scores[1])) for s in scores]
                    attended = weights[0] * v[0] + weights[1] * v[1]
                    expected[2 * p + i, n] = seq[i] + W["proj_out"][0] @ attended + W["proj_out"][1]
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("coupling", ["saim", "none"])
def test_coupling_is_real_and_switchable(tiny_backbone, coupling):
    latents, t, emb, _ = _inputs(tiny_backbone, pairs=1)
    unet, adapter = _dual(tiny_backbone, AdapterConfig(rank=4, coupling=coupling))
    _randomise(adapter)
    other = latents.clone()
    other[1] = torch.randn(other[1].shape, generator=torch.Generator().manual_seed(9))
    with torch.no_grad():
        a = dual_forward(unet, adapter, latents, t, emb)
        b = dual_forward(unet, adapter, other, t, emb)
    assert (a[1] - b[1]).abs().max() > 1e-2  # the part branch itself changed
    change = (a[0] - b[0]).abs().max().item()
    if coupling == "saim":
        assert change > 1e-3
        assert all(adapter.processor(n).saim is not None for n in adapter.layers)
    else:
        assert change == 0.0
        assert all(adapter.processor(n).saim is None for n in adapter.layers)
        assert not any("saim" in k for k in adapter.adapter_state_dict())


def test_dual_state_reaches_every_processor(tiny_backbone):
    latents, t, emb, background = _inputs(tiny_backbone, pairs=2)
    unet, adapter = _dual(tiny_backbone, AdapterConfig(rank=2, bcm=True))
    state = DualState(mode="record")
    with torch.no_grad():
        unet(background, t[0::2], emb[0::2], cross_attention_kwargs={"dual_state": state})
    attn1 = sorted(n for n in adapter.layers if n.endswith("attn1"))
    assert sorted(state.references) == attn1
    modules = dict(unet.named_modules())
    for name, ref in state.references.items():
        assert ref.shape[0] == 2 and ref.shape[2] == modules[name].to_q.in_features


def _copy_shared_weights(source: DualAdapter, target: DualAdapter) -> None:
    state = {k: v for k, v in source.adapter_state_dict().items() if ".bcm." not in k}
    target.load_adapter_state_dict(state)


def test_bcm_with_zero_gate_equals_no_bcm(tiny_backbone):
    latents, t, emb, background = _inputs(tiny_backbone)
    unet_bcm, with_bcm = _dual(tiny_backbone, AdapterConfig(rank=4, bcm=True))
    _randomise(with_bcm)
    with torch.no_grad():
        for layer in with_bcm.layers:
            if with_bcm.processor(layer).bcm is not None:
                with_bcm.processor(layer).bcm.alpha.zero_()
    unet_plain, plain = _dual(tiny_backbone, AdapterConfig(rank=4, bcm=False))
    _copy_shared_weights(with_bcm, plain)
    with torch.no_grad():
        got = dual_forward(unet_bcm, with_bcm, latents, t, emb, background_latents=background)
        expected = dual_forward(unet_plain, plain, latents, t, emb)
    assert torch.equal(got, expected)


def _first_layer_kv_inputs(unet, adapter, latents, t, emb, background):
    # the hook observes to_k's input, which only the plain path calls (the fast path uses merged weights)
    adapter.set_fast_inference(False)
    seen = []
    handle = unet.get_submodule(FIRST_ATTN1).to_k.register_forward_hook(lambda m, args, out: seen.append(args[0]))
    try:
        with torch.no_grad():
            out = dual_forward(unet, adapter, latents, t, emb, background_latents=background)
    finally:
        handle.remove()
    assert len(seen) == 2  # the reference pass, then the main pass
    return out, seen[1]


@pytest.mark.parametrize("coupling", ["saim", "none"])
def test_bcm_background_reaches_the_whole_branch_only(tiny_backbone, coupling):
    latents, t, emb, background = _inputs(tiny_backbone)
    unet, adapter = _dual(tiny_backbone, AdapterConfig(rank=4, bcm=True, coupling=coupling))
    _randomise(adapter)  # BCM gates a = 0.5
    other_background = torch.randn(background.shape, generator=torch.Generator().manual_seed(5))
    out_a, kv_a = _first_layer_kv_inputs(unet, adapter, latents, t, emb, background)
    out_b, kv_b = _first_layer_kv_inputs(unet, adapter, latents, t, emb, other_background)
    # first attn1: the keys/values of whole rows come from the background, those of part rows do not
    assert (kv_a[0::2] - kv_b[0::2]).abs().max() > 1e-3
    assert torch.equal(kv_a[1::2], kv_b[1::2])
    assert (out_a[0::2] - out_b[0::2]).abs().max() > 1e-3
    part_change = (out_a[1::2] - out_b[1::2]).abs().max().item()
    if coupling == "none":
        assert part_change == 0.0  # without SAIM nothing carries the background to the part branch
    else:
        assert part_change > 0.0  # with SAIM it arrives indirectly, through the whole branch


def test_bcm_arguments_are_checked(tiny_backbone):
    latents, t, emb, background = _inputs(tiny_backbone)
    unet, adapter = _dual(tiny_backbone, AdapterConfig(rank=2, bcm=True))
    with pytest.raises(ValueError, match="background_latents"):
        dual_forward(unet, adapter, latents, t, emb)
    with pytest.raises(ValueError, match="one row per pair"):
        dual_forward(unet, adapter, latents, t, emb, background_latents=background[:1])
    unet2, plain = _dual(tiny_backbone, AdapterConfig(rank=2))
    with pytest.raises(ValueError, match="no BCM"):
        dual_forward(unet2, plain, latents, t, emb, background_latents=background)
    with pytest.raises(ValueError, match="even"):
        dual_forward(unet2, plain, latents[:3], t[:3], emb[:3])


def test_bf16_autocast_on_cpu_is_finite_and_close_to_fp32(tiny_backbone):
    latents, t, emb, background = _inputs(tiny_backbone)
    unet, adapter = _dual(tiny_backbone, AdapterConfig(rank=4, bcm=True, saim_width=16))
    _randomise(adapter, scale=0.1)
    with torch.no_grad():
        full = dual_forward(unet, adapter, latents, t, emb, background_latents=background)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            half = dual_forward(unet, adapter, latents, t, emb, background_latents=background)
    assert torch.isfinite(half).all()
    # bf16 keeps 8 bits of mantissa; through ~30 layers a few percent of the output's range is expected
    assert (half.float() - full).abs().max() <= 0.05 * full.abs().max()
    assert all(p.dtype == torch.float32 for p in adapter.parameters())


def test_bf16_autocast_training_step_reaches_every_weight(tiny_backbone):
    latents, t, emb, background = _inputs(tiny_backbone, pairs=1)
    unet, adapter = _dual(tiny_backbone, AdapterConfig(rank=4, bcm=True, text_encoder_lora=False))
    _randomise(adapter, scale=0.1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = dual_forward(unet, adapter, latents, t, emb, background_latents=background).float().pow(2).mean()
    loss.backward()
    missing = [n for n, p in adapter.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert missing == []
    assert all(p.grad.dtype == torch.float32 for p in adapter.parameters())


def test_text_encoder_lora_is_shared_and_leaves_the_backbone_alone(tiny_backbone):
    config = AdapterConfig(rank=2, text_encoder_lora=True, text_encoder_rank=4)
    adapter = DualAdapter.from_unet(tiny_backbone.unet, config, text_encoder=tiny_backbone.text_encoder, seed=0)
    stock = encode_prompts(tiny_backbone, [WHOLE, PART])
    fresh = encode_prompts(tiny_backbone, [WHOLE, PART], adapter)
    torch.testing.assert_close(fresh, stock)
    assert fresh.requires_grad and not stock.requires_grad
    te_keys = [k for k in adapter.adapter_state_dict() if k.startswith("text_encoder.")]
    layers = tiny_backbone.text_encoder.config.num_hidden_layers
    assert len(te_keys) == layers * 4 * 2  # q, k, v, out per layer; lora_A and lora_B
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in adapter.text_encoder_lora.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=g) * 0.2)
    trained = encode_prompts(tiny_backbone, [WHOLE, PART], adapter)
    assert (trained - stock).abs().max() > 1e-2
    torch.testing.assert_close(encode_prompts(tiny_backbone, [WHOLE, PART]), stock)  # backbone untouched
    trained.sum().backward()
    assert all(p.grad is not None for p in adapter.text_encoder_lora.parameters())
    assert not any(p.requires_grad for p in tiny_backbone.text_encoder.parameters())


def test_config_is_recorded_on_the_adapter(tiny_backbone):
    config = AdapterConfig(rank=2, coupling="none")
    adapter = DualAdapter.from_backbone(tiny_backbone, config, seed=0)
    assert adapter.config == config and dataclasses.asdict(adapter.config)["coupling"] == "none"
    assert adapter.backbone_hash == tiny_backbone.content_hash


# ------------------------------------------------------------------------------------- SD-1.5 architecture



def _sd15_unet_with_cheap_weights(seed: int = 0):
    """The real SD-1.5 UNet architecture, built on the meta device, with weights that cost almost nothing.

    ``bench.common.cheap_weights`` (shared with the bench, tested in tests/test_bench.py) makes every matrix a view
    of one random pool per fan-in: ~860M parameters would take 3.4 GB and many seconds to draw.
    """
    from diffusers import UNet2DConditionModel

    from bench.common import SD15_UNET, cheap_weights

    with torch.device("meta"):
        unet = UNet2DConditionModel(**SD15_UNET)
    cheap_weights(unet, seed)
    assert not any(b.is_meta for b in unet.buffers())
    return unet


def test_dual_forward_on_the_sd15_unet_architecture():
    unet = _sd15_unet_with_cheap_weights()
    adapter = DualAdapter.from_unet(unet, AdapterConfig(rank=4, saim_width=64, bcm=True), seed=0)
    layers = [n.removesuffix(".processor") for n in unet.attn_processors]
    assert len(layers) == 32  # 16 transformer blocks x (attn1, attn2)
    widths = {adapter.processor(n).saim.proj_in.in_features for n in layers}
    assert widths == {320, 640, 1280}
    attn2 = adapter.processor("down_blocks.0.attentions.0.transformer_blocks.0.attn2")
    assert attn2.lora["to_k"].down.shape == (2, 4, 768)
    adapter.install(unet)
    g = torch.Generator().manual_seed(0)
    latents = torch.randn(2, 4, 32, 32, generator=g)
    background = torch.randn(1, 4, 32, 32, generator=g)
    emb = torch.randn(2, 77, 768, generator=g)
    with torch.no_grad():
        out = dual_forward(unet, adapter, latents, torch.tensor([500, 500]), emb, background_latents=background)
    assert out.shape == (2, 4, 32, 32)
    assert torch.isfinite(out).all()


def test_gradient_checkpointing_gives_the_same_gradients(tiny_backbone):
    latents, t, emb, background = _inputs(tiny_backbone, pairs=1)
    grads = []
    for checkpointing in (False, True):
        unet, adapter = _dual(tiny_backbone, AdapterConfig(rank=4, bcm=True, saim_width=16))
        _randomise(adapter, scale=0.1)
        if checkpointing:
            unet.enable_gradient_checkpointing()
            unet.train()
        dual_forward(unet, adapter, latents, t, emb, background_latents=background).pow(2).mean().backward()
        grads.append(torch.cat([p.grad.flatten() for p in adapter.parameters()]))
    torch.testing.assert_close(grads[1], grads[0], atol=1e-6, rtol=1e-5)


def test_half_precision_unet_with_fp32_adapter_weights(tiny_backbone):
    """The fp16-on-GPU path (UNet cast before install, no autocast), exercised on CPU for dtype safety."""
    latents, t, emb, background = _inputs(tiny_backbone, pairs=1)
    unet = copy.deepcopy(tiny_backbone.unet).half()
    adapter = DualAdapter.from_unet(unet, AdapterConfig(rank=4, bcm=True), seed=0)
    adapter.install(unet)
    out = dual_forward(unet, adapter, latents.half(), t, emb.half(), background_latents=background.half())
    assert out.dtype == torch.float16 and torch.isfinite(out).all()
    expected = _stock(tiny_backbone.unet, latents, t, emb)
    assert (out.float() - expected).abs().max() <= 0.01 * expected.abs().max()
    out.float().pow(2).mean().backward()
    assert all(p.dtype == torch.float32 and p.grad is not None for p in adapter.parameters())


def test_adapter_forward_works_under_ddp(tiny_backbone, tmp_path):
    """accelerate wraps the adapter in DistributedDataParallel: calling the wrapper must run the dual pass."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    latents, t, emb, background = _inputs(tiny_backbone, pairs=1)
    unet, adapter = _dual(tiny_backbone, AdapterConfig(rank=2, bcm=True, saim_width=8))
    _randomise(adapter, scale=0.1)
    with torch.no_grad():
        expected = dual_forward(unet, adapter, latents, t, emb, background_latents=background)
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        wrapped = DistributedDataParallel(adapter)
        out = wrapped(unet, latents, t, emb, background_latents=background)
        out.pow(2).mean().backward()
    finally:
        dist.destroy_process_group()
    torch.testing.assert_close(out.detach(), expected)
    assert all(p.grad is not None for p in adapter.parameters())


# ----------------------------------------------------------------- inference fast path (merged / folded weights)


def _randomise_everything(adapter: DualAdapter, seed: int = 3) -> None:
    """Non-zero LoRA, SAIM (LayerNorm affine included) and BCM weights, as after training."""
    _randomise(adapter, seed, scale=0.2)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, param in adapter.named_parameters():
            if ".saim.norm." in name:
                param.add_(torch.randn(param.shape, generator=g) * 0.3)


def _training_path(unet, adapter, latents, t, emb, background):
    """The path training takes (gradients enabled, unmerged weights), detached."""
    with torch.enable_grad():
        return dual_forward(unet, adapter, latents, t, emb, background_latents=background).detach()


@pytest.mark.parametrize(
    "config",
    [
        AdapterConfig(rank=4),
        AdapterConfig(rank=4, saim_width=16),  # C = 32 folds proj_out into v, C = 64 keeps it (C > 2W)
        AdapterConfig(rank=4, coupling="none"),
        AdapterConfig(rank=0),
        AdapterConfig(rank=4, bcm=True, saim_width=16),
        AdapterConfig(rank=4, bcm=True, coupling="none"),
    ],
    ids=["saim", "saim-bottleneck", "lora-only", "saim-only", "saim+bcm", "lora+bcm"],
)
def test_fast_inference_path_equals_the_training_path(tiny_backbone, config):
    latents, t, emb, background = _inputs(tiny_backbone)
    background = background if config.bcm else None
    unet, adapter = _dual(tiny_backbone, config)
    _randomise_everything(adapter)
    expected = _training_path(unet, adapter, latents, t, emb, background)
    calls = []
    hook = unet.get_submodule(FIRST_ATTN1).to_q.register_forward_hook(lambda *_: calls.append(1))
    try:
        with torch.no_grad():
            got = dual_forward(unet, adapter, latents, t, emb, background_latents=background)
            again = dual_forward(unet, adapter, latents, t, emb, background_latents=background)  # from the cache
    finally:
        hook.remove()
    assert calls == ([] if config.rank else [1, 1])  # the fast path bypasses the base projection when merging
    scale = expected.abs().max().item()
    # the adapter really changes both branches, so the comparison is not between two stock outputs
    stock = torch.cat([_stock(tiny_backbone.unet, latents[b::2], t[b::2], emb[b::2]) for b in (0, 1)])
    assert (torch.cat([expected[0::2], expected[1::2]]) - stock).abs().max() > 1e-2 * scale
    for branch in (0, 1):  # whole rows, part rows
        torch.testing.assert_close(got[branch::2], expected[branch::2], atol=1e-5 * scale, rtol=1e-5)
    assert torch.equal(again, got)


def test_fast_path_off_is_the_plain_path_and_the_cache_follows_weight_changes(tiny_backbone):
    latents, t, emb, background = _inputs(tiny_backbone, pairs=1)
    unet, adapter = _dual(tiny_backbone, AdapterConfig(rank=4, bcm=True, saim_width=16))
    _randomise_everything(adapter)
    keys = sorted(adapter.adapter_state_dict())
    with torch.no_grad():
        dual_forward(unet, adapter, latents, t, emb, background_latents=background)  # fills the cache
        # in-place updates, as an optimiser step or load_adapter_state_dict make them
        other = DualAdapter.from_unet(unet, adapter.config, seed=7)
        _randomise_everything(other, seed=11)
        adapter.load_adapter_state_dict(other.adapter_state_dict())
        fast = dual_forward(unet, adapter, latents, t, emb, background_latents=background)
        adapter.set_fast_inference(False)
        plain = dual_forward(unet, adapter, latents, t, emb, background_latents=background)
    assert torch.equal(plain, _training_path(unet, adapter, latents, t, emb, background))
    torch.testing.assert_close(fast, plain, atol=1e-5 * plain.abs().max().item(), rtol=1e-5)
    assert sorted(adapter.adapter_state_dict()) == keys  # the cache never reaches the adapter file


def test_training_after_fast_inference_gets_the_plain_gradients(tiny_backbone):
    latents, t, emb, background = _inputs(tiny_backbone, pairs=1)
    config = AdapterConfig(rank=4, bcm=True, saim_width=16)
    grads = []
    for warm in (False, True):
        unet, adapter = _dual(tiny_backbone, config)
        _randomise_everything(adapter)
        if warm:
            with torch.no_grad():
                dual_forward(unet, adapter, latents, t, emb, background_latents=background)
        dual_forward(unet, adapter, latents, t, emb, background_latents=background).pow(2).mean().backward()
        grads.append(torch.cat([p.grad.flatten() for p in adapter.parameters()]))
    assert torch.equal(grads[0], grads[1])


def test_fast_path_in_half_precision_and_bf16_autocast(tiny_backbone):
    latents, t, emb, background = _inputs(tiny_backbone, pairs=1)
    unet, adapter = _dual(tiny_backbone, AdapterConfig(rank=4, bcm=True, saim_width=16))
    _randomise_everything(adapter)
    expected = _training_path(unet, adapter, latents, t, emb, background)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        bf16 = dual_forward(unet, adapter, latents, t, emb, background_latents=background)
    assert (bf16.float() - expected).abs().max() <= 0.05 * expected.abs().max()
    unet_half = copy.deepcopy(tiny_backbone.unet).half()
    half_adapter = DualAdapter.from_unet(unet_half, adapter.config, seed=0)
    half_adapter.load_adapter_state_dict(adapter.adapter_state_dict())
    half_adapter.install(unet_half)
    with torch.no_grad():
        half = dual_forward(
            unet_half, half_adapter, latents.half(), t, emb.half(), background_latents=background.half()
        )
    assert half.dtype == torch.float16 and all(p.dtype == torch.float32 for p in half_adapter.parameters())
    assert (half.float() - expected).abs().max() <= 0.01 * expected.abs().max()


@pytest.mark.parametrize(("channels", "width", "bilinear"), [(12, 12, True), (12, 6, True), (48, 8, False)])
def test_folded_saim_equals_saim_in_both_forms(channels, width, bilinear):
    g = torch.Generator().manual_seed(2)
    saim = SAIM(channels, width, g)
    with torch.no_grad():
        for param in saim.parameters():
            param.copy_(torch.randn(param.shape, generator=g) * 0.5)
    x = torch.randn(6, 5, channels, generator=g)
    plain = saim(x).detach()  # gradients enabled: the training path
    with torch.no_grad():
        folded = saim(x)
    assert (len(saim._folded(torch.float32)) == 3) is bilinear  # which folding the sizes chose
    torch.testing.assert_close(folded, plain, atol=1e-5 * plain.abs().max().item(), rtol=1e-5)
    assert (folded - x).abs().max() > 0.1  # SAIM really contributes
