"""The shipped ``toy`` backbone: loads offline, matches its recorded hashes, and knows the toy world.

Sample checks (stated margins, measured against real toy data, not against recorded numbers):

- normal prompts (32 samples, DPM-Solver++ 25 steps, guidance 2.5): the median nearest-neighbour distance of
  samples to 64 real toy normals (16x16 block means,
  RMS on 0-255) is at most ``MARGIN`` (1.5) times the spread among real normals (the 95th percentile of
  real held-out normals' nearest-neighbour distances to the same reference);
- part prompt: a median sample is mostly neutral grey (>= 60 % of pixels within 12 of 128 in every channel) and
  carries visible marks (>= 0.5 % of pixels at least 40 away from grey);
- the prompts are told apart: part samples are *not* within the normal margin, and normal samples are not grey.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from anogen.io import sha256_file
from anogen.model.backbone import TOY_DIR

pytestmark = pytest.mark.skipif(
    not (TOY_DIR / "model_index.json").is_file(),
    reason=f"the toy backbone asset is not built yet ({TOY_DIR}); build it with `python -m anogen.toy.pretrain`",
)

MARGIN = 1.5
N_SAMPLES = 32
STEPS = 25


@pytest.fixture(scope="module")
def toy():
    from anogen.config import BackboneConfig
    from anogen.model.backbone import load_backbone

    return load_backbone(BackboneConfig("toy"))


@pytest.fixture(scope="module")
def samples(toy) -> dict[str, np.ndarray]:
    import torch

    from anogen.toy.data import PROMPTS
    from anogen.toy.measures import sample

    torch.set_num_threads(1)
    return {
        name: sample(toy, [PROMPTS[name]] * N_SAMPLES, steps=STEPS, seed=seed)
        for name, seed in (("object", 11), ("texture", 12), ("part", 13))
    }


def test_asset_files_match_recipe_hashes_and_size_budget() -> None:
    recipe = json.loads((TOY_DIR / "recipe.json").read_text())
    files = {str(p.relative_to(TOY_DIR)) for p in TOY_DIR.rglob("*") if p.is_file()} - {"recipe.json"}
    assert files == set(recipe["sha256"]), "files and recipe.json disagree"
    for rel, digest in recipe["sha256"].items():
        assert sha256_file(TOY_DIR / rel) == digest, rel
    total = sum((TOY_DIR / rel).stat().st_size for rel in files)
    assert total <= 20 * 1024 * 1024
    assert not list(TOY_DIR.rglob("*.bin")) and not list(TOY_DIR.rglob("*.ckpt"))


def test_weights_are_stored_fp16() -> None:
    from safetensors import safe_open

    for component in ("unet", "vae", "text_encoder"):
        (path,) = list((TOY_DIR / component).glob("*.safetensors"))
        with safe_open(str(path), framework="pt") as handle:
            dtypes = {handle.get_slice(k).get_dtype() for k in handle.keys()}  # noqa: SIM118
        assert dtypes <= {"F16", "I64"}, (component, dtypes)


def test_loads_offline_with_the_toy_geometry(toy) -> None:
    assert os.environ["HF_HUB_OFFLINE"] == "1"
    assert toy.resolution == 64
    assert toy.vae_scale_factor == 4
    assert toy.latent_channels == 4
    n_unet = sum(p.numel() for p in toy.unet.parameters())
    assert 2e6 <= n_unet <= 5e6
    assert toy.unet.config.cross_attention_dim == toy.text_encoder.config.hidden_size
    assert next(toy.unet.parameters()).dtype.is_floating_point


def _reconstruction_iou(toy, defect: str) -> float:
    import torch

    from anogen.toy.data import defect_image, defect_pixels
    from anogen.toy.images import to_tensor, to_uint8

    items = [defect_image(kind, defect, 77, i) for kind in ("object", "texture") for i in range(4)]
    images = np.stack([it[0] for it in items])
    with torch.no_grad():
        recon = to_uint8(toy.vae.decode(toy.vae.encode(to_tensor(images)).latent_dist.mode()).sample)
    ious = []
    for (_, mask, _), rec in zip(items, recon, strict=True):
        found = defect_pixels(rec, defect)
        ious.append((found & mask).sum() / max((found | mask).sum(), 1))
    return float(np.mean(ious))


@pytest.mark.parametrize("defect", ["stain", "hole"])
def test_autoencoder_keeps_blob_defects_by_their_colour_rule(toy, defect: str) -> None:
    # After reconstruction, the colour rule still finds a good part of each blob-like defect (an 8x autoencoder
    # erases them at 64 px: IoU 0). Margins below the measured values (docs/toy.md), not equal to them.
    assert _reconstruction_iou(toy, defect) >= 0.35


@pytest.mark.xfail(strict=True, reason="known: this autoencoder washes out 2-px scratches (docs/toy.md)")
def test_autoencoder_keeps_thin_scratches(toy) -> None:
    assert _reconstruction_iou(toy, "scratch") >= 0.5


def test_normal_prompts_sample_within_the_spread_of_real_normals(samples) -> None:
    from anogen.toy.measures import grey_fraction, nn_distance, normal_spread

    for kind in ("object", "texture"):
        reference, spread = normal_spread(kind)
        distance = float(np.median(nn_distance(samples[kind], reference)))
        assert distance <= MARGIN * spread, (kind, distance, spread)
        assert float(np.median(grey_fraction(samples[kind]))) < 0.2


def test_part_prompt_samples_are_grey_with_marks_and_told_apart(samples) -> None:
    from anogen.toy.measures import grey_fraction, mark_fraction, nn_distance, normal_spread

    parts = samples["part"]
    assert float(np.median(grey_fraction(parts))) >= 0.6
    assert float(np.median(mark_fraction(parts))) >= 0.005
    for kind in ("object", "texture"):
        reference, spread = normal_spread(kind)
        assert float(np.median(nn_distance(parts, reference))) > MARGIN * spread, kind
