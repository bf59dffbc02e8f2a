"""The benchmark's plumbing (bench/), in seconds: timing order, ratios and verdicts, cheap weights, the report.

The bench itself (minutes to an hour) is out of CI: `python -m bench --quick` checks it end to end.
"""

from __future__ import annotations

import pytest
import torch

from bench.common import cheap_weights, interleaved
from bench.report import ratios, render


def test_interleaved_alternates_contestants_and_skips_the_warmup():
    calls: list[str] = []
    fns = {"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}
    around = {"b": (lambda: calls.append("enter"), lambda: calls.append("exit"))}
    result = interleaved(fns, repeats=2, warmup=1, around=around)
    assert calls == ["a", "enter", "b", "exit"] * 3
    assert result["a"]["n"] == 2 and result["b"]["n"] == 2
    assert result["a"]["min_s"] <= result["a"]["median_s"] <= result["a"]["max_s"]


def test_cheap_weights_make_a_meta_module_usable_and_match_a_plain_linear():
    with torch.device("meta"):
        net = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.LayerNorm(16), torch.nn.Linear(16, 4))
    cheap_weights(net, seed=0)
    assert not any(p.is_meta for p in net.parameters())
    x = torch.randn(3, 8)
    w1, b1 = net[0].weight, net[0].bias
    assert torch.equal(b1, torch.zeros(16)) and torch.equal(net[1].weight, torch.ones(16))
    # independent expectation: the same arithmetic written out
    h = torch.nn.functional.layer_norm(x @ w1.T, (16,))
    assert torch.allclose(net(x), h @ net[2].weight.T, atol=1e-6)
    # scaled 1/sqrt(fan_in): the weights' spread follows the fan-in
    assert 0.15 < float(w1.std()) < 0.6


def _t(median: float) -> dict:
    return {"median_s": median, "min_s": median, "max_s": median, "n": 1, "all_s": [median]}


def _part(project: bool) -> dict:
    settings = {"pairs": 1, "steps": 1, "guidance": 1.0, "sampler": "ddim", "rank": 4}
    if project:
        settings.update(project_steps=30, project_guided=True)
    return {
        "settings": settings,
        "synth": {"timings": {"pipeline": _t(10.0), "anogen_sample": _t(11.0), "anogen_e2e": _t(12.0),
                              "bare_loop": _t(5.0), "anogen_bcm": _t(15.0)}},
        "unet_step": {"timings": {"stock": _t(4.0), "dual": _t(5.0)}},
        "fit": {"timings": {"anogen_fit_step": _t(2.6), "peft_lora_step": _t(2.0)}, "pairs": 1, "samples": 2},
    }


def test_ratios_and_the_projection_follow_the_formulas():
    r = ratios(_part(project=True))
    assert r["synth"] == pytest.approx(1.1) and r["e2e"] == pytest.approx(2.4) and r["fit"] == pytest.approx(1.3)
    assert r["step"] == pytest.approx(1.25) and r["synth_bcm"] == pytest.approx(1.5)
    p = r["projected"]
    # fixed costs: anogen 11 - 1*5 = 6, pipeline 10 - 1*4 = 6, e2e extras 12 - 5 = 7; 30 guided steps = 60 calls
    assert p["synth"] == pytest.approx((6 + 60 * 5) / (6 + 60 * 4))
    assert p["e2e"] == pytest.approx((7 + 60 * 5) / (60 * 5))
    assert "projected" not in ratios(_part(project=False))


def test_report_marks_each_goal_met_or_not():
    text = render({"quick": False, "parts": {"toy": _part(project=False)}, "machine": {"cpu": "X"}})
    rows = {line.split("|")[1].strip(): line for line in text.splitlines() if line.startswith("| ") and "x |" in line}
    assert "**met**" in rows["synth time per pair vs StableDiffusionPipeline (2 images)"]  # 1.10 <= 1.15
    assert "**met**" in rows["fit time per sample vs diffusers + peft LoRA step"]  # 1.30 <= 1.3
    assert "**not met**" in rows["end-to-end synth (masks, writing) vs bare denoising loop"]  # 2.40 > 1.1
    assert "CPU: X" in text


def test_export_bench_end_to_end_on_a_small_world(tmp_path) -> None:
    """bench/export.py at 30 samples: its synth folder is one anogen reads, every contestant is timed."""
    from anogen.records import read_synth_folder
    from bench.export import make_world, run

    world = make_world(tmp_path / "w", 7)
    sets = [read_synth_folder(world["synth"] / "widget" / d) for d in ("crack", "scratch")]
    assert [len(s.samples) for s in sets] == [4, 3]
    result = run(30, 1, tmp_path / "bench", cli=False)
    # 30 images + 30 masks + 72 real normals + export.json, export_manifest.jsonl, LICENSE-NOTICE.txt
    assert result["files"] == 30 * 2 + 72 + 3 and result["written_first"] == 30 * 2 + 72
    assert result["trees_identical"]
    assert set(result["ratios"]) == {"export_copy", "export_copy_cold", "export_hardlink", "noop"}
    assert result["ratios"]["noop"] == pytest.approx(result["timings"]["noop"]["median_s"]
                                                     / result["timings"]["cp"]["median_s"])


def test_report_marks_the_export_goals() -> None:
    part = {"samples": 10000, "repeats": 3, "files": 20075, "bytes": 1e8, "load_average_before": [1, 1, 1],
            "load_average_after": [1, 1, 1], "cores": 2, "sync_s_median": 0.1,
            "ratios": {"export_copy": 1.4, "export_copy_cold": 2.0, "export_hardlink": 1.6, "noop": 0.25},
            "timings": {"cp": _t(1.0), "export_copy": _t(1.4), "export_hardlink": _t(1.6), "noop": _t(0.25)}}
    text = render({"quick": False, "parts": {"export": part}, "machine": {"cpu": "X"}})
    rows = {line.split("|")[1].strip(): line for line in text.splitlines() if line.startswith("| export")
            or line.startswith("| no-op")}
    assert "**met**" in rows["export `--link copy` vs `cp -r` of the same files"]  # 1.4 <= 1.5
    assert "**not met**" in rows["export `--link hardlink` vs `cp -r` of the same files"]  # 1.6 > 1.5
    assert "**not met**" in rows["no-op re-export vs `cp -r` of the same files"]  # 0.25 > 0.2
    assert "**not met**" in text.split("same, first export (no hash cache)")[1].split("\n")[0]  # 2.0 > 1.5
    assert "### Export vs `cp -r`" in text
