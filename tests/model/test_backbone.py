"""Backbone loading: tiny determinism, diffusers-folder round trip, refusals, offline hub, no SD-1.5 numbers."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from anogen.config import BackboneConfig
from anogen.errors import BackboneError
from anogen.model.backbone import Backbone, build_tiny, load_backbone, save_backbone
from anogen.model.small_configs import tiny_configs


def _state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def _unet_out(backbone: Backbone) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    size = backbone.resolution // backbone.vae_scale_factor
    latents = torch.randn(2, backbone.latent_channels, size, size, generator=g)
    ids = backbone.tokenizer(["a vfx with sks", "sks"], padding="max_length", truncation=True,
                             max_length=backbone.tokenizer.model_max_length, return_tensors="pt").input_ids
    with torch.no_grad():
        text = backbone.text_encoder(ids)[0]
        return backbone.unet(latents, torch.tensor([10, 500]), encoder_hidden_states=text).sample


@pytest.fixture(scope="module")
def saved_tiny(tmp_path_factory: pytest.TempPathFactory, tiny_backbone: Backbone) -> Path:
    return save_backbone(tiny_backbone, tmp_path_factory.mktemp("tiny") / "tiny backbone")


def test_tiny_is_deterministic_by_seed(tiny_backbone: Backbone) -> None:
    again = build_tiny(seed=0)
    other = build_tiny(seed=1)
    for name in ("unet", "vae", "text_encoder"):
        assert _same_weights(getattr(tiny_backbone, name), getattr(again, name)), name
        assert not _same_weights(getattr(tiny_backbone, name), getattr(other, name)), name
    assert again.content_hash == tiny_backbone.content_hash != other.content_hash
    # Building must not touch the global RNG of the caller.
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    build_tiny(seed=5)
    assert torch.equal(torch.rand(3), expected)
    # Frozen: nothing in the base model trains.
    assert not any(p.requires_grad for p in tiny_backbone.unet.parameters())


def test_save_then_load_round_trip(saved_tiny: Path, tiny_backbone: Backbone) -> None:
    for component in ("unet", "vae", "text_encoder"):
        assert list((saved_tiny / component).glob("*.safetensors")), component
    assert json.loads((saved_tiny / "model_index.json").read_text())["unet"] == ["diffusers", "UNet2DConditionModel"]
    loaded = load_backbone(BackboneConfig(str(saved_tiny)))
    for name in ("unet", "vae", "text_encoder"):
        assert _same_weights(getattr(loaded, name), getattr(tiny_backbone, name)), name
    assert loaded.source == str(saved_tiny)
    assert loaded.tokenizer("a vfx with sks").input_ids == tiny_backbone.tokenizer("a vfx with sks").input_ids
    assert (loaded.latent_channels, loaded.vae_scale_factor, loaded.resolution, loaded.scaling_factor) == (
        tiny_backbone.latent_channels, tiny_backbone.vae_scale_factor, tiny_backbone.resolution,
        tiny_backbone.scaling_factor,
    )
    torch.testing.assert_close(_unet_out(loaded), _unet_out(tiny_backbone), rtol=0, atol=0)
    # The folder hash is stable across loads, and a sampler can be built from the saved scheduler.
    assert load_backbone(BackboneConfig(str(saved_tiny))).content_hash == loaded.content_hash
    assert type(loaded.make_scheduler("dpmsolver++")).__name__ == "DPMSolverMultistepScheduler"


def test_saved_folder_is_an_ordinary_diffusers_pipeline(saved_tiny: Path, tiny_backbone: Backbone) -> None:
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(saved_tiny, safety_checker=None, requires_safety_checker=False)
    assert _same_weights(pipe.unet, tiny_backbone.unet)
    assert type(pipe.scheduler).__name__ == "PNDMScheduler"


def _copy(saved: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(saved, tmp_path / "copy"))


def _error_line(exc: BackboneError) -> str:
    text = str(exc)
    assert "\n" not in text and exc.exit_code == 2
    return text


def test_missing_component(saved_tiny: Path, tmp_path: Path) -> None:
    folder = _copy(saved_tiny, tmp_path)
    shutil.rmtree(folder / "vae")
    with pytest.raises(BackboneError) as info:
        load_backbone(BackboneConfig(str(folder)))
    line = _error_line(info.value)
    assert str(folder) in line and "missing vae" in line


def test_pickled_weights_are_refused(saved_tiny: Path, tmp_path: Path) -> None:
    folder = _copy(saved_tiny, tmp_path)
    for path in (folder / "unet").glob("*.safetensors"):
        path.rename(path.with_name("diffusion_pytorch_model.bin"))
    with pytest.raises(BackboneError) as info:
        load_backbone(BackboneConfig(str(folder)))
    assert "no .safetensors" in _error_line(info.value) and str(folder / "unet") in str(info.value)


@pytest.mark.parametrize(
    "component,change,needle",
    [
        ("unet", {"_class_name": "UNet2DModel"}, "anogen needs a UNet2DConditionModel"),
        ("text_encoder", {"hidden_size": 48}, "cross_attention_dim (32) differs from the text encoder's hidden_size"),
    ],
)
def test_wrong_architecture(saved_tiny: Path, tmp_path: Path, component: str, change: dict, needle: str) -> None:
    folder = _copy(saved_tiny, tmp_path)
    config_path = folder / component / "config.json"
    config = json.loads(config_path.read_text())
    config.update(change)
    config_path.write_text(json.dumps(config))
    with pytest.raises(BackboneError) as info:
        load_backbone(BackboneConfig(str(folder)))
    assert needle in _error_line(info.value)


def test_unknown_hub_id_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(BackboneError) as info:
        load_backbone(BackboneConfig("nobody-here/no-such-model", cache_dir=str(tmp_path / "hub")))
    line = _error_line(info.value)
    assert "'nobody-here/no-such-model' is not in the local cache" in line
    assert "HF_HUB_OFFLINE" in info.value.hint and "--backbone" in info.value.hint


def test_not_a_backbone_spec(tmp_path: Path) -> None:
    with pytest.raises(BackboneError, match=r"backbone folder \./no/such/folder/here does not exist"):
        load_backbone(BackboneConfig("./no/such/folder/here"))
    with pytest.raises(BackboneError, match="neither tiny, toy, an existing folder nor a hub id") as info:
        load_backbone(BackboneConfig("toyy"))
    assert info.value.hint == "did you mean toy?"


def test_properties_come_from_configs_not_sd15(tmp_path: Path) -> None:
    """A backbone with 3 latent channels, a 4x autoencoder and scaling 0.5: every property follows the configs."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    configs = tiny_configs(resolution=32)
    unet_cfg = {**configs["unet"], "in_channels": 3, "out_channels": 3, "sample_size": 8}
    vae_cfg = {
        **configs["vae"],
        "latent_channels": 3,
        "scaling_factor": 0.5,
        "block_out_channels": (8, 16, 16),
        "down_block_types": ("DownEncoderBlock2D",) * 3,
        "up_block_types": ("UpDecoderBlock2D",) * 3,
    }
    torch.manual_seed(0)
    tiny = build_tiny(seed=0)
    odd = Backbone(
        unet=UNet2DConditionModel(**unet_cfg),
        vae=AutoencoderKL(**vae_cfg),
        text_encoder=CLIPTextModel(CLIPTextConfig(**configs["text_encoder"])),
        tokenizer=tiny.tokenizer,
        scheduler_config=configs["scheduler"],
        source="odd",
        content_hash="",
    )
    loaded = load_backbone(BackboneConfig(str(save_backbone(odd, tmp_path / "odd"))))
    assert loaded.latent_channels == 3 and loaded.vae_scale_factor == 4
    assert loaded.resolution == 32 and loaded.scaling_factor == 0.5
    # The numbers agree with what the networks actually do to tensors.
    with torch.no_grad():
        latents = loaded.vae.encode(torch.zeros(1, 3, 32, 32)).latent_dist.mean
    side = 32 // loaded.vae_scale_factor
    assert tuple(latents.shape) == (1, loaded.latent_channels, side, side) == (1, 3, 8, 8)
    assert _unet_out(loaded).shape == (2, 3, 8, 8)
    # And the tiny backbone's own numbers match its configs (2x autoencoder, 32 px).
    assert (tiny.latent_channels, tiny.vae_scale_factor, tiny.resolution) == (
        configs["unet"]["in_channels"], 2 ** (len(configs["vae"]["block_out_channels"]) - 1), 32,
    )


def test_resolution_for_backbone_is_the_rule_fit_and_demo_share(tmp_path):
    """A backbone other than the preset's trains at its native size (tiny: 32 px, from its configs), unless the
    user chose a resolution (flag or config file); the preset's own backbone keeps the preset's resolution."""
    from anogen.config import resolve
    from anogen.model.spec import resolution_for_backbone

    toy = resolve("toy/object")
    assert toy.train.resolution == 64
    assert resolution_for_backbone(toy) == (toy, None)
    tiny = resolve("toy/object", overrides={"backbone": {"id": "tiny"}})
    moved, notice = resolution_for_backbone(tiny)
    assert moved.train.resolution == 32 and "training at 32 px" in notice and "64 px" in notice
    assert resolution_for_backbone(tiny, resolution_given=True) == (tiny, None)
    config_file = tmp_path / "mine.yaml"
    config_file.write_text("train:\n  resolution: 64\n")
    assert resolution_for_backbone(tiny, config_file=config_file) == (tiny, None)
