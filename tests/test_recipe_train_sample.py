"""The reference recipe in fit and synth: gradient clipping, BCM's grey unconditional reference and its background
schedule (a new background every K attempts, from the first third of the training normals)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from anogen.config import AdapterConfig, ConfigRequest, SampleConfig, resolve
from anogen.fit import fit
from anogen.model.adapter import save_adapter
from anogen.model.backbone import build_tiny
from anogen.model.dual import DualAdapter
from anogen.model.processor import DualState
from anogen.records import AdapterRecord
from anogen.synth import encode_backgrounds, pool_size, reference_index, sample_pairs, synthesize
from tests.test_sample import write_prior
from tests.test_train import SIZE, write_toy_category

WHOLE, PART = "a vfx with sks", "sks"


@pytest.fixture(scope="module")
def backbone():
    return build_tiny(seed=0)  # our own copy: fit and synth install adapters on it


# -------------------------------------------------------------------------------------- gradient clipping


class _RecordingAdamW(torch.optim.AdamW):
    """AdamW that records, per step, the gradient norm it was handed and the update norm it applied."""

    grad_norms: list[float] = []
    update_norms: list[float] = []

    def step(self, closure=None):  # type: ignore[override]
        params = [p for group in self.param_groups for p in group["params"]]
        grads = [p.grad for p in params if p.grad is not None]
        type(self).grad_norms.append(float(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads]))))
        before = [p.detach().clone() for p in params]
        result = super().step(closure)
        update = torch.stack([(p.detach() - b).norm() for p, b in zip(params, before, strict=True)])
        type(self).update_norms.append(float(torch.linalg.vector_norm(update)))
        return result


@pytest.mark.parametrize("max_grad_norm", [None, 1.0], ids=["no-clipping", "clip-1.0"])
def test_an_exploding_loss_step_is_clipped(backbone, tmp_path, monkeypatch, max_grad_norm):
    import anogen.fit.loop
    from anogen.data import read_category

    category = read_category(write_toy_category(tmp_path / "data"))
    real_loss = anogen.fit.loop.pair_loss
    calls = []

    def exploding_loss(*args, **kwargs):
        calls.append(1)
        loss = real_loss(*args, **kwargs)
        return loss * 1e6 if len(calls) == 3 else loss  # step 3 explodes

    _RecordingAdamW.grad_norms, _RecordingAdamW.update_norms = [], []
    monkeypatch.setattr(anogen.fit.loop, "pair_loss", exploding_loss)
    monkeypatch.setattr(torch.optim, "AdamW", _RecordingAdamW)
    lr = 1e-3
    config = resolve(None, None, {"backbone": {"id": "tiny"}, "adapter": {"rank": 4, "bcm": False},
                                  "train": {"resolution": SIZE, "steps": 4, "checkpoint_every": 0,
                                            "validate_every": 0, "learning_rate": lr,
                                            "max_grad_norm": max_grad_norm}})
    [result] = fit(category, config, tmp_path / "runs", backbone=backbone)
    grads, updates = _RecordingAdamW.grad_norms, _RecordingAdamW.update_norms
    assert len(grads) == 4
    log = [json.loads(line) for line in (result.folder / "train_log.jsonl").read_text().splitlines()]
    assert log[2]["loss"] > 1e3 * max(log[1]["loss"], log[3]["loss"])  # the step did explode
    numel = sum(p.numel() for p in result.adapter.parameters())
    if max_grad_norm is None:
        assert grads[2] > 1e4 * max(grads[1], grads[3])  # today's behaviour: the explosion reaches AdamW
        return
    # every gradient AdamW sees has norm <= max_grad_norm, the exploding one included ...
    assert max(grads) <= max_grad_norm * (1 + 1e-4)
    assert grads[2] == pytest.approx(max_grad_norm, rel=1e-3)
    # ... and the update it applies stays within AdamW's per-element bound lr (1 - b1) / sqrt(1 - b2) at step 3
    # plus weight decay, i.e. bounded independently of the loss's scale
    bound = lr * (0.1 / (1 - 0.9**3)) / np.sqrt(0.001 / (1 - 0.999**3)) * np.sqrt(numel) * 1.05
    assert updates[2] <= bound


# ------------------------------------------------------------------------------- BCM at sampling time


def _bcm_adapter(backbone) -> DualAdapter:
    adapter = DualAdapter.from_backbone(backbone, AdapterConfig(rank=4, bcm=True), seed=3)
    gen = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for name, p in adapter.named_parameters():
            if name.endswith(".up") or "bcm" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
            if name.endswith("bcm.alpha"):
                p.fill_(0.5)  # the reference pass matters
    return adapter


def _record_reference_passes(backbone):
    """A UNet pre-hook that keeps the input of every BCM reference pass (``DualState(mode="record")``)."""
    seen: list[torch.Tensor] = []

    def hook(module, args, kwargs):
        state = (kwargs.get("cross_attention_kwargs") or {}).get("dual_state")
        if isinstance(state, DualState) and state.mode == "record":
            seen.append(args[0].detach().clone())

    return seen, backbone.unet.register_forward_pre_hook(hook, with_kwargs=True)


def test_grey_unconditional_reference(backbone):
    adapter = _bcm_adapter(backbone)
    record = AdapterRecord.from_dict({"prompts": {"whole": WHOLE, "part": PART}})
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (SIZE, SIZE, 3), dtype=np.uint8) for _ in range(2)]
    refs = encode_backgrounds(backbone, images, device="cpu")
    seeds, steps = [11, 12], 3

    def run(guidance: float, uncond: str):
        cfg = SampleConfig(steps=steps, guidance=guidance, sampler="ddim", bcm_uncond_reference=uncond)
        seen, handle = _record_reference_passes(backbone)
        try:
            out = sample_pairs(backbone, adapter, record, seeds, cfg, background_latents=refs, output_type="float")
        finally:
            handle.remove()
        return out, seen

    # guidance 1.0: no unconditional pass, so the setting changes nothing at all
    (img_a, part_a), seen_a = run(1.0, "background")
    (img_b, part_b), seen_b = run(1.0, "grey")
    assert np.array_equal(img_a, img_b) and np.array_equal(part_a, part_b)
    assert all(s.shape[0] == 2 for s in seen_b)

    # guidance > 1: the unconditional rows' reference pass saw grey, the conditional rows the real background
    (img_bg, _), seen_bg = run(2.0, "background")
    (img_grey, _), seen_grey = run(2.0, "grey")
    assert len(seen_grey) == steps and all(s.shape[0] == 4 for s in seen_grey)
    # the grey image's latent, computed here through the VAE: 0 in [-1, 1] is neutral grey. (A uint8 image of
    # 128 is no substitute: the VAE's GroupNorm amplifies a uniform image's 1/255 offset.)
    with torch.no_grad():
        posterior = backbone.vae.encode(torch.zeros(1, 3, backbone.resolution, backbone.resolution)).latent_dist
    grey = (posterior.mode() - backbone.shift_factor) * backbone.scaling_factor
    alphas = backbone.make_scheduler(None).alphas_cumprod
    scheduler = backbone.make_scheduler("ddim")
    scheduler.set_timesteps(steps)
    for t, rows_bg, rows_grey in zip(scheduler.timesteps, seen_bg, seen_grey, strict=True):
        a = alphas[int(t)]
        uncond, cond = rows_grey[:2], rows_grey[2:]
        torch.testing.assert_close(cond, rows_bg[2:])  # the conditional half is untouched
        torch.testing.assert_close(rows_bg[:2], rows_bg[2:])  # "background": both halves see the same
        # same noise per pair, so uncond - cond = sqrt(a) (grey - background)
        expected = a.sqrt() * (grey.expand_as(refs) - refs)
        torch.testing.assert_close(uncond - cond, expected, rtol=0.0, atol=0.02 * float(expected.abs().max()))
    assert np.abs(img_bg - img_grey).max() > 1e-3  # and it changes the guided samples


def test_background_schedule_and_pool():
    assert [pool_size(n, "first_third") for n in (0, 1, 2, 3, 8, 9)] == [0, 1, 1, 1, 2, 3]
    assert pool_size(8, "all") == 8
    assert [reference_index(i, 3, 50) for i in (0, 49, 50, 149, 150)] == [0, 0, 1, 2, 0]
    with pytest.raises(ValueError):
        reference_index(0, 3, 0)


def _add_normal(folder, stem: str) -> None:
    """One more training normal in a prior written by ``write_prior`` (which caps at 5)."""
    import shutil

    data = json.loads((folder / "prior.json").read_text())
    row = dict(data["images"][0])
    for key in ("object", "background"):
        shutil.copy(folder / row[key], folder / row[key].replace("000", stem))
        row[key] = row[key].replace("000", stem)
    row.update(stem=stem, source=f"train/good/{stem}.png")
    data["images"].append(row)
    (folder / "prior.json").write_text(json.dumps(data))


def test_synth_changes_background_every_k_from_the_first_third(backbone, tmp_path):
    prior = write_prior(tmp_path / "prior", n=5)
    _add_normal(prior / "bottle", "005")  # 6 training normals: the first third is 000 and 001
    adapter = _bcm_adapter(backbone)
    record = {"category": "bottle", "defect": "crack", "prior": str(prior), "seed": 0,
              "backbone": {"source": "tiny", "content_hash": backbone.content_hash},
              "config": {"sample": {"steps": 1, "guidance": 2.0, "bcm_uncond_reference": "grey",
                                    "bcm_reference_every": 2, "bcm_reference_pool": "first_third"},
                         "mask": {"threshold": "otsu", "max_area_fraction": 1.0, "min_area": 0}}}
    save_adapter(adapter, tmp_path / "runs" / "bottle" / "crack", record)
    out = tmp_path / "out"
    synthesize(tmp_path / "runs", out,
               ConfigRequest(overrides={"sample": {"count": 6, "max_attempts": 6, "batch_size": 4}}))
    folder = out / "bottle" / "crack"
    rows = [json.loads(line) for line in (folder / "manifest.jsonl").read_text().splitlines()]
    assert len(rows) == 6
    assert [r["reference"] for r in rows] == ["train/000", "train/000", "train/001", "train/001",
                                              "train/000", "train/000"]
    run = json.loads((folder / "run.json").read_text())
    assert run["references"] == ["train/000", "train/001"]
    assert run["sample"]["bcm_reference_every"] == 2
