"""Adapter files: safetensors round trip, the stable key scheme, refusal of another backbone."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from anogen.config import AdapterConfig
from anogen.errors import CompatibilityError, InputError
from anogen.io import sha256_file
from anogen.model.adapter import (
    ADAPTER_SCHEMA_VERSION,
    adapter_sha256,
    load_adapter,
    save_adapter,
)
from anogen.model.backbone import build_tiny
from anogen.model.dual import DualAdapter, dual_forward, encode_prompts
from anogen.records import read_adapter_record

RECORD = {"category": "bottle", "defect": "crack", "prompts": {"whole": "a vfx with sks", "part": "sks"}, "seed": 7}


def _trained(backbone, config: AdapterConfig) -> DualAdapter:
    adapter = DualAdapter.from_backbone(backbone, config, seed=7)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for param in adapter.trainable_parameters():
            param.add_(torch.randn(param.shape, generator=g) * 0.1)
    return adapter


def _run(backbone, adapter: DualAdapter) -> torch.Tensor:
    unet = copy.deepcopy(backbone.unet)
    adapter.install(unet)
    g = torch.Generator().manual_seed(0)
    size = backbone.unet.config.sample_size
    latents = torch.randn(4, backbone.latent_channels, size, size, generator=g)
    background = torch.randn(2, backbone.latent_channels, size, size, generator=g) if adapter.config.bcm else None
    with torch.no_grad():
        emb = encode_prompts(backbone, ["a vfx with sks", "sks"] * 2, adapter)
        t = torch.tensor([10, 10, 600, 600])
        return dual_forward(unet, adapter, latents, t, emb, background_latents=background)


@pytest.mark.parametrize(
    "config",
    [AdapterConfig(rank=4, bcm=True, text_encoder_lora=True, saim_width=8), AdapterConfig(rank=2, coupling="none")],
    ids=["everything", "lora-only"],
)
def test_save_then_load_reproduces_outputs_exactly(tiny_backbone, tmp_path, config):
    adapter = _trained(tiny_backbone, config)
    before = _run(tiny_backbone, adapter)
    save_adapter(adapter, tmp_path, RECORD)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter.json", "adapter.safetensors"]
    loaded, record = load_adapter(tmp_path, tiny_backbone)
    assert loaded.config == config
    assert record.category == "bottle" and record.schema_version == ADAPTER_SCHEMA_VERSION
    assert record.raw["backbone"] == {"source": "tiny", "content_hash": tiny_backbone.content_hash}
    assert torch.equal(_run(tiny_backbone, loaded), before)
    saved = load_file(str(tmp_path / "adapter.safetensors"))
    assert set(saved) == set(adapter.adapter_state_dict())
    assert sum(v.numel() for v in saved.values()) == adapter.num_trainable() == record.raw["num_parameters"]


def test_file_keys_follow_the_documented_scheme(tiny_backbone, tmp_path):
    adapter = _trained(tiny_backbone, AdapterConfig(rank=3, bcm=True, text_encoder_lora=True))
    save_adapter(adapter, tmp_path, RECORD)
    layer = "down_blocks.0.attentions.0.transformer_blocks.0.attn1"
    with safe_open(str(tmp_path / "adapter.safetensors"), framework="pt") as f:
        keys = set(f.keys())
        meta = f.metadata()
        down = f.get_tensor(f"unet.{layer}.lora.to_q.part.down")
    attn = tiny_backbone.unet.get_submodule(layer)
    assert down.shape == (3, attn.to_q.in_features)
    torch.testing.assert_close(down, adapter.processor(layer).lora["to_q"].down[1].detach())
    for suffix in ("saim.proj_out.weight", "saim.norm.bias", "bcm.fc1.weight", "bcm.alpha", "lora.to_out.whole.up"):
        assert f"unet.{layer}.{suffix}" in keys
    assert not any(k.startswith("unet.") and ".attn2.bcm" in k for k in keys)
    q_proj = next(n for n, _ in tiny_backbone.text_encoder.named_modules() if n.endswith("layers.0.self_attn.q_proj"))
    assert f"text_encoder.{q_proj}.lora_A.weight" in keys
    assert meta["backbone_content_hash"] == tiny_backbone.content_hash
    assert meta["anogen_version"] and meta["schema_version"] == str(ADAPTER_SCHEMA_VERSION)
    assert adapter_sha256(tmp_path) == sha256_file(tmp_path / "adapter.safetensors")
    assert read_adapter_record(tmp_path).adapter_config["rank"] == 3


def test_another_backbone_is_refused_in_one_line(tiny_backbone, tmp_path):
    save_adapter(_trained(tiny_backbone, AdapterConfig(rank=2)), tmp_path, RECORD)
    other = build_tiny(seed=1)
    with pytest.raises(CompatibilityError) as info:
        load_adapter(tmp_path, other)
    assert "\n" not in str(info.value) and "backbone" in str(info.value)


def test_adapters_without_bcm_and_schema_1_still_load(tiny_backbone, tmp_path):
    adapter = _trained(tiny_backbone, AdapterConfig(rank=2))
    save_adapter(adapter, tmp_path, RECORD)
    record = json.loads((tmp_path / "adapter.json").read_text())
    assert record["has_bcm"] is False
    record["schema_version"] = 1  # the layout before BCM existed
    del record["adapter_config"]
    record["config"] = {"adapter": {"rank": 2}}  # only the resolved config, as fit records it
    (tmp_path / "adapter.json").write_text(json.dumps(record))
    loaded, _ = load_adapter(tmp_path, tiny_backbone)
    assert torch.equal(_run(tiny_backbone, loaded), _run(tiny_backbone, adapter))


def test_bad_files_are_refused(tiny_backbone, tmp_path):
    with pytest.raises(InputError, match="adapter.json"):
        read_adapter_record(tmp_path)
    adapter = _trained(tiny_backbone, AdapterConfig(rank=2))
    save_adapter(adapter, tmp_path, RECORD)
    record = json.loads((tmp_path / "adapter.json").read_text())
    (tmp_path / "adapter.json").write_text(json.dumps({**record, "schema_version": 99}))
    with pytest.raises(CompatibilityError, match="schema_version"):
        load_adapter(tmp_path, tiny_backbone)
    (tmp_path / "adapter.json").write_text(json.dumps(record))
    weights = load_file(str(tmp_path / "adapter.safetensors"))
    weights.pop(next(k for k in weights if ".saim." in k))
    save_file(weights, str(tmp_path / "adapter.safetensors"))
    with pytest.raises(CompatibilityError, match="missing"):
        load_adapter(tmp_path, tiny_backbone)


def test_save_needs_a_backbone_identity(tiny_backbone, tmp_path):
    adapter = DualAdapter.from_unet(tiny_backbone.unet, AdapterConfig(rank=2))
    with pytest.raises(ValueError, match="content_hash"):
        save_adapter(adapter, tmp_path, RECORD)
    save_adapter(adapter, tmp_path, {**RECORD, "backbone": {"source": "tiny", "content_hash": "abc"}})
    assert read_adapter_record(tmp_path).backbone.content_hash == "abc"
