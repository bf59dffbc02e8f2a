"""Sampling and the synth loop on the tiny backbone (CPU, 32 px, 2-4 steps).

- Reference equivalence: with a fresh adapter (the identity), each branch's images equal diffusers' own
  ``StableDiffusionPipeline`` run on that branch's prompt with the same scheduler, steps, guidance and initial
  latents. Tolerance: 1e-4 on [0, 1] float images (differences are float rounding from the different batch
  composition; the uint8 files then differ by at most 1 level, in practice not at all).
- Determinism: the same command gives byte-identical files. Across batch sizes, a resume or two processes, the
  float kernels see batches of other sizes and may round differently: the manifests (ids, seeds, verdicts) must
  be the same and pixel values equal within 2 uint8 levels (measured on CPU: 1 pixel in 3072 off by 1 level).
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from anogen.config import AdapterConfig, ConfigRequest, MaskConfig, SampleConfig
from anogen.errors import CompatibilityError
from anogen.model.adapter import save_adapter
from anogen.model.backbone import build_tiny
from anogen.model.dual import DualAdapter
from anogen.records import AdapterRecord
from anogen.records.manifest import read_rows
from anogen.synth import remask, sample_pairs, step_noise_generator, synthesize

WHOLE, PART = "a vfx with sks", "sks"
REPO = Path(__file__).resolve().parent.parent


def make_runs(root: Path, backbone, *, category="bottle", defect="crack", coupling="saim", perturb=0.0,
              sample=None, mask=None) -> Path:
    """An adapter folder written directly (no fit): a fresh adapter, optionally with non-zero LoRA ups."""
    adapter = DualAdapter.from_backbone(backbone, AdapterConfig(rank=4, coupling=coupling), seed=3)
    if perturb:
        gen = torch.Generator().manual_seed(5)
        with torch.no_grad():
            for name, p in adapter.named_parameters():
                if name.endswith(".up"):
                    p.copy_(torch.randn(p.shape, generator=gen) * perturb)
    record = {
        "category": category,
        "defect": defect,
        "backbone": {"source": "tiny", "content_hash": backbone.content_hash},
        "prompts": {"whole": WHOLE, "part": PART},
        "config": {"sample": sample or {"steps": 3, "sampler": "dpmsolver++"}, "mask": mask or {"threshold": "otsu"}},
        "seed": 0,
        "prior": None,
    }
    folder = root / category / defect
    save_adapter(adapter, folder, record)
    return root


PIXEL_TOLERANCE = 2  # uint8 levels, for runs whose batches differ (see the module docstring)


def assert_same_outputs(a: Path, b: Path) -> None:
    """Same files, same manifest rows (mask areas within 1%), pixels within PIXEL_TOLERANCE."""
    from PIL import Image

    files_a = sorted(p.relative_to(a).as_posix() for p in a.rglob("*") if p.is_file() and p.name != "run.json")
    files_b = sorted(p.relative_to(b).as_posix() for p in b.rglob("*") if p.is_file() and p.name != "run.json")
    assert files_a == files_b
    for rel in files_a:
        if rel.endswith("manifest.jsonl"):
            rows_a, rows_b = read_rows(a / rel), read_rows(b / rel)
            strip = [({k: v for k, v in r.items() if k != "mask_area"}, r["mask_area"]) for r in rows_a]
            strip_b = [({k: v for k, v in r.items() if k != "mask_area"}, r["mask_area"]) for r in rows_b]
            assert [x for x, _ in strip] == [x for x, _ in strip_b]
            assert np.allclose([y for _, y in strip], [y for _, y in strip_b], atol=0.01)
        elif rel.endswith(".png"):
            pa = np.asarray(Image.open(a / rel)).astype(int)
            pb = np.asarray(Image.open(b / rel)).astype(int)
            if "/mask/" in rel:
                assert (pa != pb).mean() <= 0.01, rel
            else:
                assert np.abs(pa - pb).max() <= PIXEL_TOLERANCE, rel


def tree_hashes(folder: Path) -> dict[str, str]:
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != "run.json"
    }


@pytest.fixture(scope="module")
def backbone():
    return build_tiny(seed=0)


@pytest.fixture(scope="module")
def runs(backbone, tmp_path_factory):
    return make_runs(tmp_path_factory.mktemp("runs"), backbone, perturb=0.3)


# ------------------------------------------------------------------------------------------ equivalence


@pytest.mark.parametrize(
    "coupling,bcm,sampler,steps",
    [
        ("none", False, "dpmsolver++", 3),
        ("saim", False, "pndm", 4),
        ("saim", True, "euler", 3),
        ("saim", False, "sde-dpmsolver++", 3),
        ("none", True, "ddpm", 3),
    ],
)
def test_fresh_adapter_branches_equal_stock_pipeline(backbone, coupling, bcm, sampler, steps):
    from diffusers import StableDiffusionPipeline

    adapter = DualAdapter.from_backbone(backbone, AdapterConfig(rank=4, coupling=coupling, bcm=bcm), seed=1)
    cfg = SampleConfig(sampler=sampler, steps=steps, guidance=2.5)
    seeds = [11, 22]
    side = backbone.resolution // backbone.vae_scale_factor
    background = None
    if bcm:  # a fresh BCM gate is 0: the background must not change anything either
        background = torch.randn((3, backbone.latent_channels, side, side), generator=torch.Generator().manual_seed(0))
    images, parts = sample_pairs(
        backbone, adapter, AdapterRecord.from_dict({"prompts": {"whole": WHOLE, "part": PART}}), seeds, cfg,
        background_latents=background, output_type="float",
    )
    assert images.shape == (2, backbone.resolution, backbone.resolution, 3)
    assert not adapter.is_installed(backbone.unet)  # sample_pairs leaves the stock UNet behind
    pipe = StableDiffusionPipeline(
        vae=backbone.vae, text_encoder=backbone.text_encoder, tokenizer=backbone.tokenizer, unet=backbone.unet,
        scheduler=backbone.make_scheduler(sampler), safety_checker=None, feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    for k, seed in enumerate(seeds):
        # the documented noise of attempt k: one (2, C, h, w) draw, row 0 whole, row 1 part
        gen = torch.Generator("cpu").manual_seed(seed)
        noise = torch.randn((2, backbone.latent_channels, side, side), generator=gen)
        for branch, prompt, got in ((0, WHOLE, images[k]), (1, PART, parts[k])):
            # stochastic samplers: the pipeline draws its per-step noise from the documented generator
            ref = pipe(
                prompt, negative_prompt="", num_inference_steps=steps, guidance_scale=2.5,
                latents=noise[branch : branch + 1].clone(), output_type="np",
                generator=step_noise_generator(seed, branch),
                height=backbone.resolution, width=backbone.resolution,
            ).images[0]
            assert np.abs(ref - got).max() < 1e-4, (branch, np.abs(ref - got).max())


def test_trained_part_lora_changes_only_the_part_branch(backbone):
    """Sanity check of the comparison above: a non-zero part-branch LoRA (SAIM off) moves parts, not wholes."""
    adapter = DualAdapter.from_backbone(backbone, AdapterConfig(rank=4, coupling="none"), seed=1)
    cfg = SampleConfig(steps=2, guidance=2.5)
    base_img, base_part = sample_pairs(backbone, adapter, AdapterRecord.from_dict({}), [7], cfg, output_type="float")
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in adapter.named_parameters():
            if name.endswith(".up"):
                p[1].copy_(torch.randn(p[1].shape, generator=gen) * 0.5)  # branch 1 = part
    img, part = sample_pairs(backbone, adapter, AdapterRecord.from_dict({}), [7], cfg, output_type="float")
    assert np.abs(img - base_img).max() < 1e-5
    assert np.abs(part - base_part).max() > 1e-2


# ---------------------------------------------------------------------------------------- synth loop


@pytest.mark.parametrize("sampler", ["dpmsolver++", "sde-dpmsolver++"])
def test_deterministic_across_runs_and_batch_sizes(runs, tmp_path, sampler):
    outs = []
    for name, batch in (("a", 2), ("b", 2), ("c", 3)):
        out = tmp_path / name
        sample = {"count": 4, "batch_size": batch, "sampler": sampler}
        summary = synthesize(runs, out, ConfigRequest(overrides={"sample": sample}))
        assert summary.defects[0].accepted == 4
        outs.append(tree_hashes(out))
    assert outs[0] == outs[1]  # the same command: byte-identical
    assert_same_outputs(tmp_path / "a", tmp_path / "c")
    files = outs[0]
    manifest = read_rows(tmp_path / "a" / "bottle" / "crack" / "manifest.jsonl")
    assert [r["id"] for r in manifest] == sorted(r["id"] for r in manifest)
    for row in manifest:  # every row's files exist; no file without a row
        for key in ("image", "part", "mask"):
            assert f"bottle/crack/{row[key]}" in files
    assert len([f for f in files if f.endswith(".png")]) == 3 * len(manifest)


def test_smaller_count_keeps_earlier_samples(runs, tmp_path):
    from anogen.records import read_synth_folder
    from anogen.records.manifest import result_rows

    out = tmp_path / "out"
    synthesize(runs, out, ConfigRequest(overrides={"sample": {"count": 4, "batch_size": 4}}))
    folder = out / "bottle" / "crack"
    before = tree_hashes(folder)
    summary = synthesize(runs, out, ConfigRequest(overrides={"sample": {"count": 2}}))
    assert summary.defects[0].generated == 0 and summary.defects[0].accepted == 2
    assert tree_hashes(folder) == before  # nothing of the larger result is deleted
    samples = read_synth_folder(folder).samples
    assert [s.id for s in samples] == [r["id"] for r in result_rows(read_rows(folder / "manifest.jsonl"), 4)][:2]
    assert len(samples) == 2


def test_rejected_attempts_recorded_and_exhausted(runs, tmp_path):
    out = tmp_path / "out"
    # max_area_fraction 0 rejects every non-empty mask: nothing can be accepted
    summary = synthesize(runs, out, ConfigRequest(overrides={"sample": {"count": 2, "max_attempts": 3},
                                               "mask": {"max_area_fraction": 0.0}}))
    d = summary.defects[0]
    assert d.exhausted and d.accepted == 0 and d.attempts == 3
    rows = read_rows(out / "bottle" / "crack" / "manifest.jsonl")
    assert [r["id"] for r in rows] == [0, 1, 2]
    assert all(not r["accepted"] and r["reason"] in ("mask_too_large", "empty_mask") for r in rows)
    assert sum(d.rejected.values()) == 3
    for r in rows:  # rejected attempts keep their files
        assert (out / "bottle" / "crack" / r["image"]).is_file()


def test_remask_then_top_up(runs, tmp_path):
    out = tmp_path / "out"
    synthesize(runs, out, ConfigRequest(overrides={"sample": {"count": 4}}))
    folder = out / "bottle" / "crack"
    rows = read_rows(folder / "manifest.jsonl")
    areas = sorted(r["mask_area"] for r in rows)
    limit = (areas[1] + areas[2]) / 2  # rejects the two largest masks
    result = remask(out, overrides={"max_area_fraction": limit})
    assert result.folders[0]["accepted_after"] == 2 and result.folders[0]["needs_top_up"]
    rows = read_rows(folder / "manifest.jsonl")
    assert sum(r["accepted"] for r in rows) == 2
    assert json.loads((folder / "run.json").read_text())["mask"]["max_area_fraction"] == limit
    # the same synth command tops up with the folder's new mask settings
    summary = synthesize(runs, out, ConfigRequest(overrides={"sample": {"count": 4}}))
    rows = read_rows(folder / "manifest.jsonl")
    assert summary.defects[0].accepted == 4
    assert sum(r["accepted"] for r in rows) == 4 and all(
        r["mask_area"] <= limit for r in rows if r["accepted"]
    )
    # asking for other mask settings on an existing output is refused
    with pytest.raises(CompatibilityError, match="mask settings"):
        synthesize(runs, out, ConfigRequest(overrides={"sample": {"count": 4}, "mask": {"threshold": 0.3}}))


def test_refuses_other_generation_settings_and_backbone(runs, backbone, tmp_path):
    out = tmp_path / "out"
    synthesize(runs, out, ConfigRequest(overrides={"sample": {"count": 1}}))
    with pytest.raises(CompatibilityError, match="steps"):
        synthesize(runs, out, ConfigRequest(overrides={"sample": {"count": 2, "steps": 4}}))
    other = make_runs(tmp_path / "other", build_tiny(seed=1))
    record = json.loads((other / "bottle" / "crack" / "adapter.json").read_text())
    record["backbone"] = {"source": "tiny", "content_hash": "0" * 64}  # made for a backbone we cannot load
    (other / "bottle" / "crack" / "adapter.json").write_text(json.dumps(record))
    make_runs(other, backbone, category="aaa")  # a good adapter, found (and so processed) first
    with pytest.raises(CompatibilityError, match="backbone"):
        synthesize(other, tmp_path / "out2", ConfigRequest(overrides={"sample": {"count": 1}}))
    assert not list((tmp_path / "out2").rglob("*.png"))  # nothing generated, not even for the good adapter


# -------------------------------------------------------------------------------- kill, resume, processes

_SCRIPT = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from anogen.config import ConfigRequest
    from anogen.synth import synthesize
    flags = {"sample": {"count": int(sys.argv[3]), "batch_size": int(sys.argv[4])}}
    synthesize(Path(sys.argv[1]), Path(sys.argv[2]), ConfigRequest(overrides=flags), device="cpu")
    """
)


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=str(REPO), **extra)
    return env


def test_resume_after_kill_matches_uninterrupted(runs, tmp_path):
    count = 6
    reference = tmp_path / "ref"
    synthesize(runs, reference, ConfigRequest(overrides={"sample": {"count": count, "batch_size": 1}}))
    out = tmp_path / "killed"
    manifest = out / "bottle" / "crack" / "manifest.jsonl"
    proc = subprocess.Popen([sys.executable, "-c", _SCRIPT, str(runs), str(out), str(count), "1"], env=_env())
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            if manifest.is_file() and len(read_rows(manifest)) >= 2:
                break
            time.sleep(0.05)
        assert proc.poll() is None, "synth finished before it could be killed"
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    done = len(read_rows(manifest))
    assert 2 <= done < count
    # make the worst case certain: a torn last row, a stray PNG without a row, a temp file of a killed write
    with open(manifest, "ab") as handle:
        handle.write(b'{"id": 99, "accepted": tr')
    stray = out / "bottle" / "crack" / "image" / f"{done:06d}.png"
    stray.write_bytes(b"half a png")
    (out / "bottle" / "crack" / "part" / ".000005.png.abc.tmp").write_bytes(b"x")
    synthesize(runs, out, ConfigRequest(overrides={"sample": {"count": count, "batch_size": 2}}))
    assert_same_outputs(out, reference)
    assert not stray.read_bytes().startswith(b"half")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_match_one(runs, tmp_path):
    count = 5
    reference = tmp_path / "one"
    synthesize(runs, reference, ConfigRequest(overrides={"sample": {"count": count, "batch_size": 2}}))
    out = tmp_path / "two"
    port = str(_free_port())
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _SCRIPT, str(runs), str(out), str(count), "2"],
            env=_env(RANK=str(r), LOCAL_RANK=str(r), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=port),
        )
        for r in range(2)
    ]
    codes = [p.wait(timeout=300) for p in procs]
    assert codes == [0, 0]
    assert_same_outputs(out, reference)
    assert not list((out / "bottle" / "crack").glob("manifest.rank*.jsonl"))  # shards merged away


def test_mask_config_from_adapter_record(backbone, tmp_path):
    runs = make_runs(tmp_path / "runs", backbone, perturb=0.3, mask={"threshold": 0.9, "min_area": 1})
    summary = synthesize(runs, tmp_path / "out", ConfigRequest(overrides={"sample": {"count": 1, "max_attempts": 2}}))
    run = json.loads((tmp_path / "out" / "bottle" / "crack" / "run.json").read_text())
    assert run["mask"]["threshold"] == 0.9 and run["sample"]["steps"] == 3
    assert summary.defects[0].attempts >= 1
    assert MaskConfig(**run["mask"]).threshold == 0.9


def object_region(size: int = 32) -> np.ndarray:
    obj = np.zeros((size, size), dtype=bool)
    obj[:, : size // 2] = True  # the left half
    return obj


def write_prior(root: Path, category: str = "bottle", n: int = 2, size: int = 32) -> Path:
    """A hand-written prior (``anogen prior`` layout): n normal training images, object = the left half."""
    from PIL import Image

    folder = root / category
    rows = []
    obj = object_region(size)
    for k in range(n):
        stem = f"{k:03d}"
        (folder / "object" / "train").mkdir(parents=True, exist_ok=True)
        (folder / "background" / "train").mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.where(obj, 255, 0).astype(np.uint8)).save(folder / "object" / "train" / f"{stem}.png")
        bg = np.full((size, size, 3), 60 + 40 * k, dtype=np.uint8)
        bg[obj] = 0  # the object blacked out
        Image.fromarray(bg).save(folder / "background" / "train" / f"{stem}.png")
        rows.append({"role": "train", "split": "train", "stem": stem, "source": f"train/good/{stem}.png",
                     "sha256": "0", "object": f"object/train/{stem}.png", "background": f"background/train/{stem}.png"})
    (folder / "prior.json").write_text(json.dumps({"schema_version": 1, "kind": "object", "category": category,
                                                   "images": rows}))
    return root


def test_bcm_and_on_object_only(backbone, tmp_path):
    """A BCM adapter samples with backgrounds cycled by id; off-object masks are rejected by the object mask."""
    prior = write_prior(tmp_path / "prior")
    adapter = DualAdapter.from_backbone(backbone, AdapterConfig(rank=4, bcm=True), seed=3)
    gen = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for name, p in adapter.named_parameters():
            if name.endswith(".up") or name.endswith("gate") or "bcm" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
    record = {"category": "bottle", "defect": "crack", "prior": str(prior), "seed": 0,
              "backbone": {"source": "tiny", "content_hash": backbone.content_hash},
              "config": {"sample": {"steps": 2}, "mask": {"threshold": "otsu", "max_area_fraction": 0.9}}}
    save_adapter(adapter, tmp_path / "runs" / "bottle" / "crack", record)
    out = tmp_path / "out"
    summary = synthesize(tmp_path / "runs", out, ConfigRequest(overrides={"sample": {"count": 3, "max_attempts": 6},
                                                             "mask": {"on_object_only": True}}))
    folder = out / "bottle" / "crack"
    rows = read_rows(folder / "manifest.jsonl")
    assert [r["reference"] for r in rows] == [f"train/{i % 2:03d}" for i in range(len(rows))]
    obj = object_region()
    from anogen.io import load_mask

    verdicts = []
    for r in rows:  # the verdict agrees with the share of each written mask on the object
        mask = load_mask(folder / r["mask"])
        if r["reason"] in ("empty_mask", "mask_too_large"):
            continue
        on = (mask & obj).sum() / mask.sum()
        assert (r["reason"] == "off_object") == (on < 0.5), (r, on)
        verdicts.append(r["reason"])
    assert "off_object" in verdicts and None in verdicts  # both cases were exercised
    assert summary.defects[0].attempts == len(rows)
    # the backgrounds reach the model: other backgrounds, same seed -> other images (the trained gate is not 0)
    side = 16
    bgs = torch.randn((2, 4, side, side), generator=torch.Generator().manual_seed(1))
    cfg = SampleConfig(steps=2)
    made_with = AdapterRecord.from_dict(record)
    a, _ = sample_pairs(backbone, adapter, made_with, [9], cfg, background_latents=bgs[:1], output_type="float")
    b, _ = sample_pairs(backbone, adapter, made_with, [9], cfg, background_latents=bgs[1:], output_type="float")
    assert np.abs(a - b).max() > 1e-3


def test_fast_rank_waits_for_the_slow_one(tmp_path):
    """A rank more than `lookahead` ids ahead of the first unfinished id waits until the others catch up."""
    import threading

    from anogen.records.manifest import append_row, make_row, shard_name
    from anogen.synth.run import wait_for_slower_ranks

    def row(i):
        return make_row(i, seed=i, category="c", defect="d", accepted=True, reason=None, mask_area=0.1,
                        adapter_sha256="x")

    for i in (0, 2):
        append_row(tmp_path / shard_name(0), row(i))
    rows = {0: row(0), 2: row(2)}

    def pending():
        return [i for i in range(0, 12, 2) if i not in rows]

    def slow_rank():
        time.sleep(0.3)
        for i in (1, 3):
            append_row(tmp_path / shard_name(1), row(i))

    thread = threading.Thread(target=slow_rank)
    start = time.monotonic()
    thread.start()
    todo = wait_for_slower_ranks(tmp_path, rows, pending(), pending, lookahead=2)
    thread.join()
    assert time.monotonic() - start >= 0.25  # it did wait for ids 1 and 3
    assert todo == [4, 6, 8, 10] and 1 in rows  # released once id 1 was done: 4 <= first missing (3) + 2


def test_progress_counts_are_the_manifests(runs, tmp_path):
    """The last progress event says what the manifest and the summary say (issue 18.1): attempts of the last batch
    past the count-th accepted one are cut from the manifest, so progress must not count them as rejected."""
    events = []
    probe = tmp_path / "probe"
    synthesize(runs, probe, ConfigRequest(overrides={"sample": {"count": 8, "batch_size": 8, "max_attempts": 8}}))
    areas = {r["id"]: r["mask_area"] for r in read_rows(probe / "bottle" / "crack" / "manifest.jsonl")}
    assert len(areas) == 8
    # A mask-area limit that rejects some attempt after an accepted one, within the one batch of 8.
    for limit in sorted({(a + b) / 2 for a in areas.values() for b in areas.values() if a < b}):
        accepted = [i for i in sorted(areas) if 0 < areas[i] <= limit]
        later_rejected = [i for i in sorted(areas) if accepted and i > accepted[0] and not 0 < areas[i] <= limit]
        if later_rejected:
            break
    else:
        pytest.skip("no mask-area limit rejects an attempt after an accepted one in these 8 attempts")
    out = tmp_path / "out"
    summary = synthesize(runs, out, ConfigRequest(overrides={"sample": {"count": 1, "batch_size": 8, "max_attempts": 8},
                                               "mask": {"max_area_fraction": limit}}), progress=events.append)
    rows = read_rows(out / "bottle" / "crack" / "manifest.jsonl")
    in_manifest = sum(not r["accepted"] for r in rows)
    assert [r["id"] for r in rows][-1] == accepted[0]  # the manifest ends at the first accepted attempt
    last = [e for e in events if e.task == "synth bottle/crack"][-1]
    assert (last.completed, last.total) == (1, 1)
    assert last.info["rejected"] == in_manifest == sum(summary.defects[0].rejected.values())
    assert summary.defects[0].attempts == len(rows)
    # A rerun (nothing left to do) reports the same counts, from the manifest.
    events.clear()
    synthesize(runs, out, ConfigRequest(overrides={"sample": {"count": 1, "batch_size": 8, "max_attempts": 8},
                                     "mask": {"max_area_fraction": limit}}),
               progress=events.append)
    assert [(e.completed, e.info["rejected"]) for e in events] == [(1, in_manifest)]


def test_progress_counts_with_two_ranks_are_the_merged_manifests(runs, tmp_path, monkeypatch):
    """Issue 18.1 across processes: rank 0's last progress line is the merged manifest's counts, whatever rows the
    other rank wrote after rank 0's last batch (two ranks as two threads sharing a barrier)."""
    import threading

    import anogen.model.backbone as backbone_module
    from anogen.dist import Dist

    # build_tiny seeds torch's global generator: two threads must not build at the same time.
    lock, build = threading.Lock(), backbone_module.build_tiny

    def build_one_at_a_time(*args, **kwargs):
        with lock:
            return build(*args, **kwargs)

    monkeypatch.setattr(backbone_module, "build_tiny", build_one_at_a_time)
    barrier = threading.Barrier(2, timeout=300)
    events: list = []
    overrides = {"sample": {"count": 3, "batch_size": 1}, "mask": {"threshold": 0.6}}
    errors: list = []

    def rank(r: int) -> None:
        try:
            synthesize(runs, tmp_path / "out", ConfigRequest(overrides=overrides),
                       dist=Dist(rank=r, world=2, barrier=barrier.wait), device="cpu",
                       progress=events.append if r == 0 else None)
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
            barrier.abort()

    threads = [threading.Thread(target=rank, args=(r,)) for r in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    rows = read_rows(tmp_path / "out" / "bottle" / "crack" / "manifest.jsonl")
    last = [e for e in events if e.task == "synth bottle/crack"][-1]
    assert last.completed == sum(r["accepted"] for r in rows) == 3
    assert last.info["rejected"] == sum(not r["accepted"] for r in rows)
