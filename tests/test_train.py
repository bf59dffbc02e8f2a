"""The fit loop (anogen/fit/) on the tiny backbone and toy-like 32 px trees, on the CPU.

Expectations are independent of the loop: the loss is re-measured here from the images on disk with our own
pair construction and a fixed set of timesteps and noise; reloaded adapters are compared with the in-memory
ones; resumed runs with uninterrupted ones; two-process runs with one-process runs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from anogen.config import resolve
from anogen.data import read_category
from anogen.errors import CompatibilityError, DataError, InputError
from anogen.fit import dihedral_variants, fit, plan_fit
from anogen.io import canonical_safetensors

SIZE = 32
REPO = Path(__file__).resolve().parents[1]


def write_toy_category(root: Path, defects: tuple[str, ...] = ("stain",), images: int = 6, size: int = SIZE) -> Path:
    """An MVTec-style category: a light disc on a dark noisy ground; defects are small discs of one colour."""
    folder = root / "widget"
    yy, xx = np.mgrid[:size, :size]
    colours = {"stain": (230, 30, 200), "hole": (20, 20, 20), "scratch": (250, 250, 250)}

    def normal(seed: int) -> np.ndarray:
        rng = np.random.default_rng(seed)
        img = (np.full((size, size, 3), 80) + rng.integers(0, 12, (size, size, 3))).astype(np.uint8)
        img[(yy - size / 2) ** 2 + (xx - size / 2) ** 2 < (0.3 * size) ** 2] = (170, 160, 150)
        return img

    for i in range(4):
        path = folder / "train" / "good" / f"{i:03d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(normal(i)).save(path)
    for d, name in enumerate(defects):
        for i in range(images):
            img = normal(100 + 10 * d + i)
            cy, cx = np.random.default_rng(1000 + 10 * d + i).integers(10, size - 10, 2)
            mask = (yy - cy) ** 2 + (xx - cx) ** 2 < (size / 8) ** 2
            img[mask] = colours.get(name, (0, 200, 0))
            for sub, arr, suffix in (("test", img, ""), ("ground_truth", mask * 255, "_mask")):
                path = folder / sub / name / f"{i:03d}{suffix}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(arr.astype(np.uint8)).save(path)
    return folder


def small_config(**train):
    values = {"resolution": SIZE, "steps": 4, "checkpoint_every": 0, "validate_every": 0, "learning_rate": 1e-3}
    values.update(train)
    return resolve(
        None, None, {"backbone": {"id": "tiny"}, "adapter": {"rank": 4, "bcm": False}, "train": values}
    )


@pytest.fixture(scope="module")
def category(tmp_path_factory):
    return read_category(write_toy_category(tmp_path_factory.mktemp("data")))


def _pairs_from_disk(category, defect: str) -> torch.Tensor:
    """(2N, 3, 32, 32) rows whole, part for each training image, built here from the files (not by anogen.fit.data)."""
    rows = []
    for sample in sorted(category.defects[defect].samples, key=lambda s: s.stem)[:2]:  # floor(6/3) = 2 train
        img = np.asarray(Image.open(sample.image.path).convert("RGB"), dtype=np.float32) / 127.5 - 1
        mask = np.asarray(Image.open(sample.mask.path)) > 0
        rows += [img, img * mask[..., None]]
    return torch.from_numpy(np.stack(rows)).permute(0, 3, 1, 2)


def _fixed_loss(backbone, adapter, pixels: torch.Tensor, prompts: list[str]) -> float:
    """Mean dual loss over fixed timesteps and noise (seeded), on latents of the training pairs."""
    from anogen.model.dual import dual_forward, encode_prompts

    with torch.no_grad():
        latents = backbone.vae.encode(pixels).latent_dist.mean * backbone.scaling_factor
        scheduler = backbone.make_scheduler()
        gen = torch.Generator().manual_seed(1234)
        embeds = encode_prompts(backbone, prompts).repeat(latents.shape[0] // 2, 1, 1)
        adapter.install(backbone.unet)
        try:
            losses = []
            for t in (50, 200, 400, 600, 800):
                noise = torch.randn(latents.shape, generator=gen)
                timesteps = torch.full((latents.shape[0],), t)
                noisy = scheduler.add_noise(latents, noise, timesteps)
                pred = dual_forward(backbone.unet, adapter, noisy, timesteps, embeds)
                losses.append(torch.mean((pred - noise) ** 2).item())
        finally:
            adapter.uninstall(backbone.unet)
    return float(np.mean(losses))


def test_training_lowers_the_loss_and_save_load_reproduces(category, tiny_backbone, tmp_path):
    from anogen.model.adapter import load_adapter
    from anogen.model.dual import DualAdapter, dual_forward

    config = small_config(steps=60, learning_rate=3e-3)
    pixels = _pairs_from_disk(category, "stain")
    prompts = [config.adapter.prompt_whole, config.adapter.prompt_part]
    fresh = DualAdapter.from_backbone(tiny_backbone, config.adapter, seed=7)
    before = _fixed_loss(tiny_backbone, fresh, pixels, prompts)

    [result] = fit(category, config, tmp_path / "runs", backbone=tiny_backbone)
    assert result.status == "trained" and result.steps_done == 60
    loaded, record = load_adapter(result.folder, tiny_backbone)
    after = _fixed_loss(tiny_backbone, loaded, pixels, prompts)
    # Fitting two images for 60 steps at lr 1e-3 takes a clear bite out of the loss (measured ~0.6x).
    assert after < 0.85 * before, (before, after)

    # save -> load reproduces the in-memory adapter's outputs exactly
    gen = torch.Generator().manual_seed(0)
    latents = torch.randn((2, 4, 16, 16), generator=gen)
    hidden = torch.randn((2, 32, 32), generator=gen)
    outputs = []
    for adapter in (result.adapter, loaded):
        adapter.install(tiny_backbone.unet)
        with torch.no_grad():
            outputs.append(dual_forward(tiny_backbone.unet, adapter, latents, torch.tensor([300, 300]), hidden))
        adapter.uninstall(tiny_backbone.unet)
    assert torch.equal(outputs[0], outputs[1])

    # adapter.json records what docs/architecture.md lists
    assert record.raw["category"] == "widget" and record.raw["defect"] == "stain"
    assert record.raw["split"] == {"train": ["000", "001"], "held_out": ["002", "003", "004", "005"]}
    assert record.raw["backbone"]["content_hash"] == tiny_backbone.content_hash
    assert record.raw["steps_done"] == 60 and record.raw["seed"] == 0 and record.raw["schema_version"] >= 1
    assert record.raw["config"]["train"]["steps"] == 60 and record.raw["prompts"]["part"] == "sks"
    assert record.raw["data"]["format"] == "mvtec" and record.raw["data"]["image_size"] == [SIZE, SIZE]
    log = [json.loads(line) for line in (result.folder / "train_log.jsonl").read_text().splitlines()]
    assert [row["step"] for row in log] == list(range(1, 61))
    assert set(log[0]) == {"step", "loss", "lr", "elapsed_s"}
    grid = np.asarray(Image.open(result.folder / "validation" / "step-000060.png"))
    assert grid.shape == (2 * SIZE, 2 * SIZE, 3)  # two rows of (whole, part)


def _log(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "train_log.jsonl").read_text().splitlines()]


def test_resume_continues_the_same_loss_sequence_and_bytes(category, tiny_backbone, tmp_path):
    config = small_config(steps=8, checkpoint_every=3, checkpoints_keep=2)
    [full] = fit(category, config, tmp_path / "a", backbone=tiny_backbone)

    class Stop(Exception):
        pass

    def stop_at_5(event):
        if event.completed == 5:
            raise Stop

    with pytest.raises(Stop):
        fit(category, config, tmp_path / "b", backbone=tiny_backbone, progress=stop_at_5)
    folder = tmp_path / "b" / "widget" / "stain"
    assert not (folder / "adapter.safetensors").exists()  # interrupted: no adapter, a checkpoint at step 3
    assert [p.name for p in (folder / "checkpoints").iterdir()] == ["step-000003"]
    with pytest.raises(InputError, match="already holds a fit"):
        plan_fit(category, config, tmp_path / "b")
    [resumed] = fit(category, config, tmp_path / "b", backbone=tiny_backbone, resume=True)
    assert resumed.status == "resumed"
    # step 4.. of the resumed run: the same losses as the uninterrupted run, bit for bit (CPU, same threads)
    assert [r["loss"] for r in _log(folder)] == [r["loss"] for r in _log(full.folder)]
    assert _content(folder) == _content(full.folder)
    # kept-checkpoint limit: the newest two (6, and the final 8)
    assert sorted(p.name for p in (folder / "checkpoints").iterdir()) == ["step-000006", "step-000008"]
    # a finished adapter is left alone by --resume; more --steps continue it
    [again] = fit(category, config, tmp_path / "b", backbone=tiny_backbone, resume=True)
    assert again.status == "complete"


def test_resume_keeps_the_recorded_target_unless_retargeted(category, tiny_backbone, tmp_path):
    """Issue 18.2: a resume continues the recorded run to its recorded target, whatever train.steps now says;
    only ``retarget`` (the CLI's explicit --steps) changes it, and the plan says which target it changed."""

    class Stop(Exception):
        pass

    def stop_at_2(event):
        if event.completed == 2:
            raise Stop

    interrupted = small_config(steps=4, checkpoint_every=1)
    with pytest.raises(Stop):
        fit(category, interrupted, tmp_path / "runs", backbone=tiny_backbone, progress=stop_at_2)
    other_steps = small_config(steps=3, checkpoint_every=1)  # e.g. the preset's steps, not the recorded run's
    [item] = plan_fit(category, other_steps, tmp_path / "runs", resume=True).defects
    assert (item.resume_from, item.steps, item.recorded_steps) == (2, 4, None)
    [resumed] = fit(category, other_steps, tmp_path / "runs", backbone=tiny_backbone, resume=True)
    folder = tmp_path / "runs" / "widget" / "stain"
    record = json.loads((folder / "adapter.json").read_text())
    assert resumed.steps_done == 4 and record["steps_done"] == 4 and record["config"]["train"]["steps"] == 4
    before = (folder / "adapter.safetensors").read_bytes()
    # Finished: a resume with other train.steps leaves it alone ...
    [again] = fit(category, small_config(steps=9, checkpoint_every=1), tmp_path / "runs", backbone=tiny_backbone,
                  resume=True)
    assert again.status == "complete" and again.steps_done == 4
    assert (folder / "adapter.safetensors").read_bytes() == before
    # ... and an explicit new target continues it, saying which recorded target it changed.
    longer = small_config(steps=6, checkpoint_every=1)
    [item] = plan_fit(category, longer, tmp_path / "runs", resume=True, retarget=True).defects
    assert (item.resume_from, item.steps, item.recorded_steps) == (4, 6, 4)
    [more] = fit(category, longer, tmp_path / "runs", backbone=tiny_backbone, resume=True, retarget=True)
    assert more.status == "resumed" and json.loads((folder / "adapter.json").read_text())["steps_done"] == 6


def test_resume_refuses_another_config(category, tiny_backbone, tmp_path):
    fit(category, small_config(steps=2, checkpoint_every=1), tmp_path / "r", backbone=tiny_backbone)
    with pytest.raises(CompatibilityError, match=r"learning_rate = 0\.001 there, 0\.01 now"):
        plan_fit(category, small_config(steps=4, learning_rate=1e-2), tmp_path / "r", resume=True)
    other = resolve(None, None, {"backbone": {"id": "tiny", "seed": 5}, "adapter": {"rank": 4, "bcm": False},
                                 "train": {"resolution": SIZE, "steps": 4, "learning_rate": 1e-3}})
    with pytest.raises(CompatibilityError, match="backbone.seed"):
        plan_fit(category, other, tmp_path / "r", resume=True)


def _content(folder: Path) -> bytes:
    """adapter.safetensors with its metadata keys in a fixed order (see test_adapter_bytes_are_identical)."""
    return canonical_safetensors((folder / "adapter.safetensors").read_bytes())


def test_same_inputs_give_the_same_adapter(category, tiny_backbone, tmp_path):
    config = small_config(steps=3, checkpoint_every=3)
    [a] = fit(category, config, tmp_path / "a", backbone=tiny_backbone)
    [b] = fit(category, config, tmp_path / "b", backbone=tiny_backbone)
    assert _content(a.folder) == _content(b.folder)
    [c] = fit(category, small_config(steps=3, seed=1), tmp_path / "c", backbone=tiny_backbone)
    assert _content(a.folder) != _content(c.folder)
    # checkpoints (written by anogen/fit/checkpoints.py) are byte-identical already
    for name in ("state.safetensors", "state.json"):
        ca = a.folder / "checkpoints" / "step-000003" / name
        assert ca.read_bytes() == (b.folder / "checkpoints" / "step-000003" / name).read_bytes()


def test_adapter_bytes_are_identical(category, tiny_backbone, tmp_path):
    config = small_config(steps=1)
    folders = [fit(category, config, tmp_path / str(i), backbone=tiny_backbone)[0].folder for i in range(3)]
    assert len({(f / "adapter.safetensors").read_bytes() for f in folders}) == 1


def test_flip_group():
    assert dihedral_variants(()) == [(0, False)]
    assert len(dihedral_variants(("horizontal",))) == 2
    assert len(dihedral_variants(("horizontal", "vertical"))) == 4
    assert len(dihedral_variants(("rotate90",))) == 4
    assert len(dihedral_variants(("horizontal", "rotate90"))) == 8


def test_plan_counts_and_refusals(category, tiny_backbone, tmp_path):
    from anogen.model.dual import DualAdapter

    plan = plan_fit(category, small_config(), tmp_path / "runs", device="cpu")
    real = DualAdapter.from_backbone(tiny_backbone, small_config().adapter).num_trainable()
    assert plan.trainable_parameters == real  # counted on the meta device, without loading the backbone
    assert plan.estimated_peak_bytes and plan.estimated_peak_bytes > plan.backbone_parameters * 4
    assert [d.defect for d in plan.defects] == ["stain"]
    with pytest.raises(InputError, match="no defect type 'crack'"):
        plan_fit(category, small_config(), tmp_path / "runs", defects=["crack"])
    with pytest.raises(DataError, match="--shots 9 is more than the 6 images"):
        plan_fit(category, small_config(shots=9), tmp_path / "runs")
    bcm = resolve(None, None, {"backbone": {"id": "tiny"}, "adapter": {"bcm": True}, "train": {"resolution": SIZE}})
    with pytest.raises(InputError, match="BCM is on but no prior"):
        plan_fit(category, bcm, tmp_path / "runs")
    with pytest.raises(InputError, match="fp16 needs a CUDA GPU"):
        plan_fit(category, small_config(mixed_precision="fp16"), tmp_path / "runs", device="cpu")
    with pytest.raises(InputError, match="not a multiple of 4"):
        plan_fit(category, small_config(resolution=30), tmp_path / "runs")


def test_bcm_trains_from_prior_backgrounds(category, tiny_backbone, tmp_path):
    from anogen.priors import build_prior

    build_prior(category, tmp_path / "priors", kind="object")
    config = resolve(None, None, {"backbone": {"id": "tiny"}, "adapter": {"rank": 4, "bcm": True},
                                  "train": {"resolution": SIZE, "steps": 2, "checkpoint_every": 0}})
    [result] = fit(category, config, tmp_path / "runs", prior_dir=tmp_path / "priors", backbone=tiny_backbone)
    record = json.loads((result.folder / "adapter.json").read_text())
    assert record["prior"] == str(tmp_path / "priors") and record["config"]["adapter"]["bcm"] is True


# ------------------------------------------------------------------------------------ two CPU processes


def _launch(args: list[str], tmp_path: Path, processes: int) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "1", "HF_HUB_OFFLINE": "1",
           "ANOGEN_CACHE": str(tmp_path / "cache")}
    if processes > 1:
        launcher = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes",
                    str(processes), "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                    "--main_process_port", "0", "-m", "anogen"]
    else:
        launcher = [sys.executable, "-m", "anogen"]
    proc = subprocess.run([*launcher, *args], env=env, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(folder / "adapter.safetensors"))


@pytest.mark.slow  # four launches, ~1 min on 2 busy cores
def test_two_processes_data_parallel_and_per_defect(tmp_path):
    """Data parallel (2 x batch 1) matches one process with batch 2; per-defect mode matches sequential runs."""
    data = write_toy_category(tmp_path / "data", defects=("hole", "stain"))
    common = ["fit", str(data), "--backbone", "tiny", "--preset", "generic/texture", "--bcm", "off",
              "--resolution", str(SIZE), "--rank", "4", "--lr", "1e-3", "--steps", "3", "--validate-every", "0",
              "--checkpoint-every", "0", "--quiet",
              # the trained weights themselves: an fp16 file would turn bit noise into one fp16 step (1.2e-4 at 0.2)
              "--save-dtype", "fp32"]
    _launch([*common, "--defect", "stain", "--batch-size", "2", "--out", str(tmp_path / "one")], tmp_path, 1)
    _launch([*common, "--defect", "stain", "--batch-size", "1", "--parallel", "data", "--out",
             str(tmp_path / "dp")], tmp_path, 2)
    one = _weights(tmp_path / "one" / "widget" / "stain")
    dp = _weights(tmp_path / "dp" / "widget" / "stain")
    assert one.keys() == dp.keys()
    # The same global batch: the logged losses (means over both pairs) agree to float rounding.
    losses = [[r["loss"] for r in _log(tmp_path / d / "widget" / "stain")] for d in ("one", "dp")]
    assert np.allclose(losses[0], losses[1], rtol=1e-5, atol=0), losses
    # Weights: gradients all-reduced over processes differ from one batch's in the last float bits, and Adam
    # turns bit noise on near-zero gradients into steps of up to lr; 3 steps at lr 1e-3 move a weight by up to
    # 3e-3, a different batch moves it by ~1e-3. Tolerance: 1e-4.
    worst = max((one[k] - dp[k]).abs().max().item() for k in one)
    assert worst < 1e-4, worst
    moved = max(one[k].abs().max().item() for k in one if k.endswith(".up"))
    assert moved > 1e-3  # the comparison is not between two untrained adapters

    _launch([*common, "--out", str(tmp_path / "seq")], tmp_path, 1)
    _launch([*common, "--parallel", "defects", "--out", str(tmp_path / "pd")], tmp_path, 2)
    for defect in ("hole", "stain"):
        assert _content(tmp_path / "seq" / "widget" / defect) == _content(tmp_path / "pd" / "widget" / defect)


def test_gradient_checkpointing_bf16_and_text_encoder_lora_train(category, tiny_backbone, tmp_path):
    base = small_config(steps=3)
    [plain] = fit(category, base, tmp_path / "plain", backbone=tiny_backbone)
    [ckpt] = fit(category, small_config(steps=3, gradient_checkpointing=True), tmp_path / "ckpt",
                 backbone=tiny_backbone)
    # Recomputing activations in the backward pass changes nothing but memory.
    assert np.allclose([r["loss"] for r in _log(plain.folder)], [r["loss"] for r in _log(ckpt.folder)], rtol=1e-5)
    assert not tiny_backbone.unet.is_gradient_checkpointing  # restored after the fit

    [half] = fit(category, small_config(steps=2, mixed_precision="bf16"), tmp_path / "bf16", backbone=tiny_backbone)
    assert all(np.isfinite(r["loss"]) for r in _log(half.folder))
    assert next(tiny_backbone.unet.parameters()).dtype == torch.float32  # a passed-in backbone is given back
    assert all(p.dtype == torch.float32 for p in half.adapter.trainable_parameters())
    # bf16 autocast computes the same step as fp32 to bf16 precision
    assert abs(_log(half.folder)[0]["loss"] - _log(plain.folder)[0]["loss"]) < 0.05

    te = resolve(None, None, {"backbone": {"id": "tiny"}, "adapter": {"rank": 4, "bcm": False,
                              "text_encoder_lora": True, "text_encoder_rank": 2},
                              "train": {"resolution": SIZE, "steps": 3, "learning_rate": 1e-2, "checkpoint_every": 0}})
    [with_te] = fit(category, te, tmp_path / "te", backbone=tiny_backbone)
    moved = [p for n, p in with_te.adapter.text_encoder_lora.named_parameters() if "lora_B" in n]
    assert moved and any(p.abs().max() > 0 for p in moved)  # the shared text-encoder LoRA was trained


def test_resume_edges(category, tiny_backbone, tmp_path):
    # a finished adapter without checkpoints: --resume leaves it alone; another config is still refused
    fit(category, small_config(steps=2), tmp_path / "n", backbone=tiny_backbone)
    assert plan_fit(category, small_config(steps=2), tmp_path / "n", resume=True).defects[0].complete
    with pytest.raises(CompatibilityError, match="adapter.rank"):
        bigger = resolve(None, None, {"backbone": {"id": "tiny"}, "adapter": {"rank": 8, "bcm": False},
                                      "train": {"resolution": SIZE, "steps": 2, "learning_rate": 1e-3,
                                                "checkpoint_every": 0, "validate_every": 0}})
        plan_fit(category, bigger, tmp_path / "n", resume=True)
    # more steps asked explicitly (--steps, i.e. retarget) need a checkpoint to continue from
    assert plan_fit(category, small_config(steps=5), tmp_path / "n", resume=True).defects[0].complete
    with pytest.raises(CompatibilityError, match="no checkpoint to continue it from"):
        plan_fit(category, small_config(steps=5), tmp_path / "n", resume=True, retarget=True)
    # a checkpoint beyond --steps
    fit(category, small_config(steps=3, checkpoint_every=3), tmp_path / "p", backbone=tiny_backbone)
    (tmp_path / "p" / "widget" / "stain" / "adapter.json").unlink()
    with pytest.raises(InputError, match="already past --steps 2"):
        plan_fit(category, small_config(steps=2, checkpoint_every=3), tmp_path / "p", resume=True, retarget=True)
    # interrupted between the last checkpoint and the adapter: --resume writes the adapter from it
    [done] = fit(category, small_config(steps=3, checkpoint_every=3), tmp_path / "p", backbone=tiny_backbone,
                 resume=True)
    assert done.status == "resumed" and (done.folder / "adapter.json").is_file()


def test_a_checkpoint_from_before_the_recipe_fields_still_resumes(tmp_path):
    """Fields added since 0.1 (saim_init, bcm_width, max_grad_norm) default to 0.1's behaviour, so a checkpoint
    whose resume key lacks them resumes; one that differs in a field it did record is still refused."""
    import copy
    import json as json_

    from anogen.config import resolve
    from anogen.errors import CompatibilityError
    from anogen.fit import CHECKPOINT_SCHEMA_VERSION, RESUMABLE_TRAIN_FIELDS, check_resume

    config = resolve("toy/object").to_dict()
    key = {
        "adapter": config["adapter"],
        "train": {k: v for k, v in config["train"].items() if k not in RESUMABLE_TRAIN_FIELDS},
        "backbone": {"id": "toy", "seed": 0, "content_hash": "abc"},
        "split": ["a", "b"],
        "data_parallel_processes": 1,
    }
    old = copy.deepcopy(key)  # what 0.1 wrote: none of the fields added since
    for name in ("saim_init", "bcm_width"):
        old["adapter"].pop(name)
    old["train"].pop("max_grad_norm")
    checkpoint = tmp_path / "step-000010"
    checkpoint.mkdir()
    state = {"schema_version": CHECKPOINT_SCHEMA_VERSION, "step": 10, "resume_key": old}
    (checkpoint / "state.json").write_text(json_.dumps(state))
    assert check_resume(checkpoint, key, check_backbone_hash=True)["step"] == 10
    for section, name, value in (("adapter", "rank", key["adapter"]["rank"] + 1), ("adapter", "saim_init", "default")):
        changed = copy.deepcopy(key)
        changed[section][name] = value  # a recorded field changed, or a new one set away from 0.1's behaviour
        with pytest.raises(CompatibilityError, match=f"adapter.{name}"):
            check_resume(checkpoint, changed, check_backbone_hash=True)


def test_plan_time_is_wall_time_with_defects_in_parallel(tmp_path):
    """Two defect types on two processes (--parallel defects) train side by side: the plan's time is one
    adapter's, half of the one-process plan's; data parallelism trains them one after another."""
    two = read_category(write_toy_category(tmp_path / "data", defects=("stain", "hole")))
    config = small_config(steps=400)  # seconds, not tenths: the estimate is rounded to 0.1 s
    one = plan_fit(two, config, tmp_path / "runs", num_processes=1, device="cpu")
    side = plan_fit(two, config, tmp_path / "runs", num_processes=2, parallel="defects", device="cpu")
    data = plan_fit(two, config, tmp_path / "runs", num_processes=2, parallel="data", device="cpu")
    assert [d.process for d in side.defects] == [0, 1]
    assert one.estimated_seconds and side.estimated_seconds == pytest.approx(one.estimated_seconds / 2, rel=0.02)
    assert data.estimated_seconds == one.estimated_seconds
