"""bench/threads.py's plumbing in seconds: slowdown arithmetic, verdicts, bounded neighbours, step gaps."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench.threads import _fit_steps, clean_env, goals, load_key, mode_env, parse_load, section, slowdowns

ROOT = Path(__file__).resolve().parents[1]


def _t(median: float, threads: int = 2) -> dict:
    return {"median_s": median, "threads": threads, "runs": []}


def _part() -> dict:
    modes = ["torch", "anogen"]
    timings = {"fit": {"0": {"torch": _t(1.0), "anogen": _t(1.02)},
                       "1": {"torch": _t(9.0), "anogen": _t(2.04)},
                       "2": {"torch": _t(30.0), "anogen": _t(3.2)}}}
    accelerate = {"one_process": {"median_s": 0.5}, "two_processes": {"median_s": 0.45},
                  "two_processes_torch_default": {"median_s": 4.0}}
    return {"settings": {"modes": modes}, "timings": timings, "accelerate": accelerate, "cores": 2, "affinity": 2}


def test_slowdowns_divide_by_the_same_setting_alone():
    s = slowdowns(_part())["fit"]
    assert s["torch"]["2"] == pytest.approx(30.0) and s["anogen"]["1"] == pytest.approx(2.0)
    assert s["anogen"]["2"] == pytest.approx(3.2 / 1.02) and s["anogen"]["0"] == pytest.approx(1.0)


def test_goals_follow_issue_17():
    rows = {name: (value, met) for name, value, _, met in goals(_part())}
    busy = rows["toy fit step beside 2 busy processes vs alone, anogen policy"]
    assert busy[0] == pytest.approx(3.2 / 1.02) and busy[1] is False  # 3.14 > 3
    solo = rows["toy fit step alone: anogen policy vs torch default"]
    assert solo[0] == pytest.approx(1.02) and solo[1] is True  # within the 5 % noise band
    acc = rows["fit step, 2 accelerate CPU processes vs 1 process (same global batch)"]
    assert acc[0] == pytest.approx(0.9) and acc[1] is True
    text = "\n".join(section(_part()))
    assert "| fit | 2 | 30.00 s [2], 30.00x | 3.20 s [2], 3.14x |" in text


def test_other_neighbours_get_rows_of_their_own():
    part = _part()
    part["timings"]["fit"]["2:single"] = {"torch": _t(12.0), "anogen": _t(2.1)}
    rows = {name: (value, met) for name, value, _, met in goals(part)}
    single = rows["same, beside 2 single-threaded busy processes"]
    assert single[0] == pytest.approx(2.1 / 1.02) and single[1] is True
    assert not any("anogen processes" in name for name in rows)  # not measured: no row
    assert "| fit | 2, 1 thread each | 12.00 s [2], 12.00x | 2.10 s [2], 2.06x |" in "\n".join(section(part))


def test_loads_name_their_neighbours():
    assert parse_load(2) == (2, "torch") and parse_load("2") == (2, "torch")
    assert parse_load("2:single") == (2, "single") and parse_load("1:anogen") == (1, "anogen")
    with pytest.raises(ValueError, match="unknown neighbour kind"):
        parse_load("2:quiet")
    assert load_key("2:torch") == load_key(2) == "2" and load_key("2:single") == "2:single"


def test_missing_figures_give_no_verdict():
    part = _part()
    del part["accelerate"]
    part["timings"]["fit"]["2"]["anogen"] = {"median_s": None, "threads": None, "runs": [{"error": "x"}]}
    verdicts = {name: met for name, _, _, met in goals(part)}
    assert verdicts["toy fit step beside 2 busy processes vs alone, anogen policy"] is None
    assert verdicts["fit step, 2 accelerate CPU processes vs 1 process (same global batch)"] is None


def test_fit_step_gaps_come_from_the_training_log(tmp_path):
    log = tmp_path / "train_log.jsonl"
    elapsed = [5.0, 5.5, 6.5, 7.0, 7.6]  # step 1 includes start-up; gaps from step 2 on: 1.0, 0.5, 0.6
    log.write_text("".join(json.dumps({"step": i + 1, "elapsed_s": e}) + "\n" for i, e in enumerate(elapsed)))
    assert _fit_steps(log, skip=2) == pytest.approx(0.6)


def test_modes_start_from_a_clean_environment(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "7")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    assert "OMP_NUM_THREADS" not in clean_env() and "LOCAL_WORLD_SIZE" not in clean_env()
    assert "BENCH_POLICY" not in mode_env("torch") and mode_env("anogen")["BENCH_POLICY"] == "1"
    assert mode_env("one-thread")["ANOGEN_THREADS"] == "1"
    assert mode_env("anogen-passive")["OMP_WAIT_POLICY"] == "PASSIVE"
    assert mode_env("spin-3000")["GOMP_SPINCOUNT"] == "3000" and mode_env("spin-3000")["BENCH_POLICY"] == "1"
    with pytest.raises(ValueError):
        mode_env("anogen-fast")
    part = _part()
    part["timings"]["fit"]["2"]["anogen"]["waits"] = ["PASSIVE"]
    assert "3.20 s [2, PASSIVE], 3.14x" in "\n".join(section(part))


def test_a_busy_neighbour_stops_by_itself():
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "bench.threads", "busy", "0.5"], cwd=ROOT, env=clean_env(),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "ready"
    assert time.monotonic() - started < 60
