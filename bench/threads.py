"""CPU threads on a shared machine: anogen's thread policy against torch's default, side by side (issue 17).

A toy fit step and a toy synth batch are timed alone and beside 1 and 2 busy processes (each a torch matmul loop
with torch's default threads, the kind of neighbour a shared CI runner has), under these settings of the
measured process, interleaved round by round so that load changes hit them alike. A load ``N:KIND`` (``--loads``)
takes other neighbours: ``N:single``, one thread each (a single-threaded job); ``N:anogen``, the same matmul
loop under anogen's thread policy (other anogen commands, the issue's own case of a demo, a fit and a synth).
Settings of the measured process:

* ``torch``: torch's defaults (no thread variables: one intra-op thread per core, OpenMP's spinning wait);
* ``anogen``: ``anogen.threads.apply_thread_policy()`` (what every ``anogen`` command does at start-up: it sleeps
  idle OpenMP threads where the machine is shared, and leaves the runtime's spin where it is idle);
* ``anogen-passive``: the policy's threads with ``OMP_WAIT_POLICY=PASSIVE`` always (the policy's wait before
  2026-12-03);
* ``anogen-spin``: the policy's thread count with the OpenMP runtime's default wait (``OMP_WAIT_POLICY`` unset);
* ``one-thread``: ``ANOGEN_THREADS=1``, for reference;
* ``spin-N`` (not run by default; ``--modes``): the policy's threads with ``GOMP_SPINCOUNT=N``, a bounded spin
  before a waiting OpenMP thread sleeps (``spin-0`` sleeps at once, as ``PASSIVE`` does).

Then real fitting (``anogen fit`` on toy data, the toy backbone): one process against two ``accelerate launch``
CPU processes splitting the same global batch (``--parallel data``), per step, under the policy and with torch's
default of a thread per core in each process.

    .venv/bin/python -m bench.threads [--quick] [--out threads.json]     # standalone, prints Markdown
    .venv/bin/python -m bench --parts threads                            # into docs/benchmarks.md

Each measurement runs in a fresh process started with a clean environment (the thread variables of the caller
removed), since the OpenMP runtime reads them once, when torch loads.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # `python bench/threads.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import ROOT  # noqa: E402

MODES = ("torch", "anogen", "anogen-passive", "anogen-spin", "one-thread")
# Variables a caller may have set that would change what "torch's default" means in the measured process.
CLEARED = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT",
           "ANOGEN_THREADS", "ANOGEN_THREADS_EXPORTED", "LOCAL_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_SIZE",
           "MPI_LOCALNRANKS", "RANK", "WORLD_SIZE", "LOCAL_RANK")
GOMP_DEFAULT_SPINCOUNT = "300000"  # libgomp's spin count when OMP_WAIT_POLICY is unset (its manual)
GOALS = {"busy2": 3.0, "solo": 1.05, "accelerate": 1.0}


def settings(quick: bool) -> dict[str, Any]:
    if quick:
        return dict(backbone="tiny", fit_pairs=1, synth_pairs=1, synth_steps=2, repeats=2, warmup=1, rounds=1,
                    loads=[0, 1], synth_loads=[0, 1], modes=["torch", "anogen"], workloads=["fit"],
                    synth_modes=["torch", "anogen"],
                    fit_steps=4, accelerate=True, budget_s=60)
    # The other kinds of neighbour for the fit step only: a synth batch beside them would add ten minutes.
    return dict(backbone="toy", fit_pairs=2, synth_pairs=2, synth_steps=10, repeats=5, warmup=1, rounds=2,
                loads=[0, 1, 2, "2:single", "2:anogen"], synth_loads=[0, 1, 2], modes=list(MODES),
                workloads=["fit", "synth"], synth_modes=["torch", "anogen"],
                fit_steps=30, accelerate=True, budget_s=90)


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in CLEARED}
    env.update(HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", **extra)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


def mode_env(mode: str) -> dict[str, str]:
    """The environment a measured process of ``mode`` starts with."""
    if mode == "anogen-spin":
        return clean_env(BENCH_POLICY="1", BENCH_RUNTIME_WAIT="1")
    if mode == "one-thread":
        return clean_env(ANOGEN_THREADS="1", BENCH_POLICY="1")
    if mode == "anogen":
        return clean_env(BENCH_POLICY="1")
    if mode == "anogen-passive":
        return clean_env(BENCH_POLICY="1", OMP_WAIT_POLICY="PASSIVE")
    if mode.startswith("spin-"):  # a user-set GOMP_SPINCOUNT: the policy leaves the wait to the runtime
        return clean_env(BENCH_POLICY="1", GOMP_SPINCOUNT=str(int(mode.removeprefix("spin-"))))
    if mode != "torch":
        raise ValueError(f"unknown mode {mode!r}")
    return clean_env()


# ---------------------------------------------------------------------------------------- worker processes


# What each kind of busy neighbour starts with (see the module's docstring).
NEIGHBOURS = {"torch": {}, "single": {"OMP_NUM_THREADS": "1"}, "anogen": {"BENCH_POLICY": "1"}}


def busy(seconds: float) -> None:
    """A neighbour: matmuls until ``seconds`` have passed (a bounded lifetime), with torch's default threads or, with
    ``BENCH_POLICY=1``, under anogen's thread policy."""
    if os.environ.get("BENCH_POLICY") == "1":
        from anogen.threads import apply_thread_policy

        apply_thread_policy()
    import torch

    a, b = torch.randn(384, 384), torch.randn(384, 384)
    print("ready", flush=True)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for _ in range(20):
            a = (a @ b).tanh_()


def subject(workload: str, args: dict[str, Any]) -> dict[str, Any]:
    """Time ``repeats`` fit steps or synth batches in this process; returns the timings and the threads used."""
    if os.environ.get("BENCH_POLICY") == "1":
        from anogen.threads import apply_thread_policy

        apply_thread_policy()
        if os.environ.get("BENCH_RUNTIME_WAIT") == "1":  # the policy's threads, the OpenMP runtime's own wait
            os.environ.pop("OMP_WAIT_POLICY", None)
    import torch

    from bench.speed import _adapter, _anogen_step, _sample_config, _setup

    backbone, _ = _setup({"backbone": args["backbone"]})
    if workload == "fit":
        step, _ = _anogen_step(backbone, {"pairs": args["fit_pairs"], "rank": 8, "saim_width": None})
    else:
        from anogen.records import AdapterRecord
        from anogen.synth import sample_pairs

        adapter = _adapter(backbone, 8, None)
        sc = _sample_config({"sampler": "dpmsolver++", "steps": args["synth_steps"], "guidance": 2.5,
                             "pairs": args["synth_pairs"]})
        seeds = list(range(args["synth_pairs"]))

        def step() -> None:
            sample_pairs(backbone, adapter, AdapterRecord.from_dict({}), seeds, sc, device="cpu")

    times: list[float] = []
    began = time.perf_counter()
    for i in range(args["warmup"] + args["repeats"]):
        t0 = time.perf_counter()
        step()
        if i >= args["warmup"]:
            times.append(time.perf_counter() - t0)
        # A setting 30x slower than the others would take most of an hour for its repeats: a time budget, with
        # at least one timed step (the report shows how many).
        if times and time.perf_counter() - began > args.get("budget_s", 1e9):
            break
    return {"median_s": statistics.median(times), "all_s": [round(t, 4) for t in times],
            "threads": torch.get_num_threads(), "interop_threads": torch.get_num_interop_threads(),
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"), "gomp_spincount": os.environ.get("GOMP_SPINCOUNT")}


# ------------------------------------------------------------------------------------------ the scenarios


def parse_load(load: int | str) -> tuple[int, str]:
    """``2`` or ``"2"`` -> (2, "torch"); ``"2:single"`` -> (2, "single")."""
    count, _, kind = str(load).partition(":")
    kind = kind or "torch"
    if kind not in NEIGHBOURS:
        raise ValueError(f"unknown neighbour kind {kind!r} (one of {', '.join(NEIGHBOURS)})")
    return int(count), kind


def load_key(load: int | str) -> str:
    """The key a load's results are stored under: ``"2"`` for torch's neighbours (``2``, ``"2:torch"``),
    ``"2:single"`` for the others."""
    count, kind = parse_load(load)
    return str(count) if kind == "torch" else f"{count}:{kind}"


def _start_busy(load: int | str, seconds: float) -> list[subprocess.Popen]:
    count, kind = parse_load(load)
    procs = []
    for _ in range(count):
        procs.append(subprocess.Popen([sys.executable, "-m", "bench.threads", "busy", str(seconds)], cwd=ROOT,
                                      env=clean_env(**NEIGHBOURS[kind]), stdout=subprocess.PIPE, text=True))
        # Each neighbour is computing before the next starts (an anogen neighbour's policy sees the ones before it)
        # and before the measurement starts.
        procs[-1].stdout.readline()
    return procs


def _stop(procs: list[subprocess.Popen]) -> None:
    for proc in procs:
        proc.terminate()
    for proc in procs:
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _measure(workload: str, mode: str, load: int | str, config: dict[str, Any]) -> dict[str, Any]:
    with tempfile.NamedTemporaryFile("r", suffix=".json", prefix="bench-threads-") as result:
        neighbours = _start_busy(load, seconds=900)
        try:
            proc = subprocess.run([sys.executable, "-m", "bench.threads", "subject", workload, json.dumps(config),
                                   result.name], cwd=ROOT, env=mode_env(mode), capture_output=True, text=True,
                                  timeout=1800)
        finally:
            _stop(neighbours)
        if proc.returncode != 0:
            return {"error": (proc.stderr or proc.stdout)[-2000:]}
        return json.loads(Path(result.name).read_text())


def _fit_steps(log: Path, skip: int) -> float | None:
    rows = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    gaps = [b["elapsed_s"] - a["elapsed_s"] for a, b in zip(rows[:-1], rows[1:], strict=True) if a["step"] >= skip]
    return statistics.median(gaps) if gaps else None


def _accelerate(config: dict[str, Any], work: Path) -> dict[str, Any]:
    """Seconds per fit step: one process (global batch 2) vs two accelerate CPU processes (batch 1 each)."""
    from anogen.toy.data import make_category

    data = make_category(work / "data", kind="object", seed=0, defects=("stain",))
    common = ["fit", str(data), "--backbone", config["backbone"], "--preset", "toy/object", "--defect", "stain",
              "--bcm", "off", "--steps", str(config["fit_steps"]), "--validate-every", "0", "--checkpoint-every",
              "0", "--quiet"]
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "0",
              "-m", "anogen"]
    cores = str(os.cpu_count() or 1)
    runs = {
        "one_process": ([sys.executable, "-m", "anogen"], ["--batch-size", "2"], {}),
        "two_processes": (launch, ["--batch-size", "1", "--parallel", "data"], {}),
        # torch's default in each process: a thread per core, OpenMP's spinning wait
        "two_processes_torch_default": (launch, ["--batch-size", "1", "--parallel", "data"],
                                        {"ANOGEN_THREADS": cores, "GOMP_SPINCOUNT": GOMP_DEFAULT_SPINCOUNT}),
    }
    out: dict[str, Any] = {}
    skip = 2 if config["fit_steps"] > 4 else 1
    for r in range(config["rounds"]):
        for name, (cmd, extra, env_extra) in runs.items():
            folder = work / f"{name}-{r}"
            env = clean_env(ACCELERATE_USE_CPU="1", ANOGEN_CACHE=str(work / "cache"), **env_extra)
            proc = subprocess.run([*cmd, *common, *extra, "--out", str(folder)], cwd=ROOT, env=env,
                                  capture_output=True, text=True, timeout=1800)
            if proc.returncode != 0:
                out[name] = {"error": proc.stderr[-2000:]}
                continue
            value = _fit_steps(folder / data.name / "stain" / "train_log.jsonl", skip)
            out.setdefault(name, {"all_s": []})["all_s"].append(value)
    for block in out.values():
        if "all_s" in block:
            block["median_s"] = statistics.median(v for v in block["all_s"] if v is not None)
    return out


def run(quick: bool, work: Path | None = None, **overrides: Any) -> dict[str, Any]:
    """The whole measurement; returns the part's results (``python -m bench --parts threads`` stores them).
    ``overrides`` replace settings (e.g. ``modes``, ``loads``, ``workloads``, ``accelerate``)."""
    config = {**settings(quick), **overrides}
    results: dict[str, Any] = {"settings": config, "cores": os.cpu_count(),
                               "affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
                               "timings": {}}
    for _ in range(config["rounds"]):
        for workload in config["workloads"]:
            for load in config["loads"] if workload == "fit" else config["synth_loads"]:
                for mode in config["modes"] if workload == "fit" else config["synth_modes"]:
                    got = _measure(workload, mode, load, config)
                    print(f"bench.threads: {workload}, {load} busy, {mode}: {got.get('median_s', got.get('error'))}",
                          file=sys.stderr, flush=True)
                    slot = results["timings"].setdefault(workload, {}).setdefault(load_key(load), {})
                    slot.setdefault(mode, []).append(got)
    for per_load in results["timings"].values():
        for per_mode in per_load.values():
            for mode, runs in per_mode.items():
                ok = [r for r in runs if "median_s" in r]
                per_mode[mode] = {"median_s": statistics.median(r["median_s"] for r in ok) if ok else None,
                                  "threads": ok[0]["threads"] if ok else None,
                                  "waits": sorted({r.get("omp_wait_policy") or "spin" for r in ok}),
                                  "steps": sum(len(r["all_s"]) for r in ok), "runs": runs}
    if config["accelerate"]:
        with tempfile.TemporaryDirectory(prefix="bench-threads-") as tmp:
            results["accelerate"] = _accelerate(config, Path(work or tmp))
    return results


# ------------------------------------------------------------------------------------------------- report


def slowdowns(part: dict[str, Any]) -> dict[str, dict[str, dict[str, float | None]]]:
    """{workload: {mode: {load: median(load) / median(alone)}}}, same mode and workload."""
    out: dict[str, dict[str, dict[str, float | None]]] = {}
    for workload, per_load in part.get("timings", {}).items():
        alone = per_load.get("0", {})
        for load, per_mode in per_load.items():
            for mode, block in per_mode.items():
                base = (alone.get(mode) or {}).get("median_s")
                value = block.get("median_s")
                out.setdefault(workload, {}).setdefault(mode, {})[load] = (
                    value / base if value is not None and base else None)
    return out


LOAD_NAMES = {"torch": "busy processes (torch's default threads)", "single": "single-threaded busy processes",
              "anogen": "busy anogen processes (thread policy)"}


def _load_label(load: str) -> str:
    count, kind = parse_load(load)
    return str(count) if kind == "torch" or count == 0 else f"{count}, {'1 thread each' if kind == 'single' else kind}"


def _f(x: float | None, suffix: str = "") -> str:
    return "-" if x is None else f"{x:.2f}{suffix}"


def goals(part: dict[str, Any]) -> list[tuple[str, float | None, str, bool | None]]:
    """(goal, measured ratio, goal text, met) for issue 17's "done when"."""
    s = slowdowns(part).get("fit", {})
    fit = part.get("timings", {}).get("fit", {}).get("0", {})
    solo = None
    if (fit.get("anogen") or {}).get("median_s") and (fit.get("torch") or {}).get("median_s"):
        solo = fit["anogen"]["median_s"] / fit["torch"]["median_s"]
    acc = part.get("accelerate", {})
    two = (acc.get("two_processes") or {}).get("median_s")
    one = (acc.get("one_process") or {}).get("median_s")
    rows = [
        ("toy fit step beside 2 busy processes vs alone, anogen policy", s.get("anogen", {}).get("2"), "<= 3x",
         GOALS["busy2"]),
    ]
    # The same goal beside other kinds of neighbour, where they were measured.
    rows += [(f"same, beside 2 {LOAD_NAMES[kind]}", s.get("anogen", {}).get(f"2:{kind}"), "<= 3x", GOALS["busy2"])
             for kind in ("single", "anogen") if f"2:{kind}" in s.get("anogen", {})]
    rows += [
        ("toy fit step alone: anogen policy vs torch default", solo, "<= 1.05x (noise)", GOALS["solo"]),
        ("fit step, 2 accelerate CPU processes vs 1 process (same global batch)", two / one if two and one else None,
         "<= 1x", GOALS["accelerate"]),
    ]
    return [(name, value, text, None if value is None else value <= goal) for name, value, text, goal in rows]


def section(part: dict[str, Any]) -> list[str]:
    """The Markdown section of docs/benchmarks.md."""
    cpu = (part.get("machine") or {}).get("cpu", "?")
    load = (part.get("load_average_before") or [0])[0]
    busy_machine = (" **The load average was above the core count: other jobs' load swung single figures by "
                    "2-5x between minutes, so compare settings within a row, and read a verdict from one such run "
                    "as an indication, not a proof.**" if load > (part.get("cores") or 1) else "")
    shared = ("The 1-minute load average before it was above 1 (other work, or a part of the bench that ran just "
              "before, still counts in it), so *alone* may not be quite alone; on a quiet machine rerun "
              "`python -m bench --parts threads` (about 35 minutes on 2 cores)." if load > 1.0 else
              "The machine was quiet (nothing else running), so *alone* is alone.")
    lines = ["## CPU threads on a shared machine", "",
             f"Measured {part.get('measured_at', '?')} on {cpu}, load average before / after "
             f"{part.get('load_average_before')} / {part.get('load_average_after')}; {part.get('cores')} cores "
             f"({part.get('affinity')} in the affinity mask), {part.get('seconds', '?')} s. {shared}{busy_machine} "
             "Settings: "
             "`torch` = torch's defaults, `anogen` = the thread policy (what every command applies: it sleeps "
             "idle OpenMP threads when the machine is shared at start-up, spins when it is idle), `anogen-passive` "
             "= the policy's threads with `OMP_WAIT_POLICY=PASSIVE` always (the default before 2026-12-03), "
             "`anogen-spin` = the policy's threads with OpenMP's default spinning wait, `one-thread` = "
             "`ANOGEN_THREADS=1`. Busy neighbours: torch matmul loops with torch's default threads (a thread per "
             "core, spinning when idle); `1 thread each`: the same loop with `OMP_NUM_THREADS=1`; `anogen`: the same "
             "loop under anogen's thread policy. With k neighbour threads runnable, fair sharing leaves the measured "
             "process's 2 threads 2/(2+k) of the 2 cores, so no setting can be less than (2+k)/2 times slower than "
             "alone with 2 threads: 3x beside two processes of torch's default (k = 4), 2x beside two "
             "single-threaded ones.", "",
             "| goal | measured | goal | verdict |", "| --- | --- | --- | --- |"]
    for name, value, text, met in goals(part):
        verdict = "-" if met is None else ("**met**" if met else "**not met**")
        lines.append(f"| {name} | {_f(value, 'x')} | {text} | {verdict} |")
    lines += ["", "Seconds per step (median; threads and OpenMP wait used in brackets) and slowdown against the same "
              "setting alone:",
              "", "| workload | busy neighbours | " + " | ".join(part["settings"]["modes"]) + " |",
              "| --- | --- | " + " | ".join("---" for _ in part["settings"]["modes"]) + " |"]
    ratios = slowdowns(part)
    for workload, per_load in part.get("timings", {}).items():
        for load, per_mode in sorted(per_load.items(), key=lambda item: parse_load(item[0])):
            cells = []
            for mode in part["settings"]["modes"]:
                block = per_mode.get(mode) or {}
                ratio = ratios.get(workload, {}).get(mode, {}).get(load)
                if not block:
                    cells.append("")
                    continue
                waits = "/".join(block.get("waits") or [])
                cells.append(f"{_f(block.get('median_s'))} s [{block.get('threads')}{', ' + waits if waits else ''}]"
                             + (f", {_f(ratio, 'x')}" if load != "0" else ""))
            lines.append(f"| {workload} | {_load_label(load)} | " + " | ".join(cells) + " |")
    acc = part.get("accelerate")
    if acc:
        lines += ["", "`anogen fit` (toy object, `--parallel data`), seconds per step (median of the step gaps in "
                  "`train_log.jsonl`):", "", "| run | s / step |", "| --- | --- |"]
        for name, block in acc.items():
            lines.append(f"| {name.replace('_', ' ')} | {_f(block.get('median_s'))}"
                         + (f" (error: {block['error'][-120:]!r})" if "error" in block else "") + " |")
    return [*lines, ""]


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["busy"]:
        busy(float(argv[1]))
        return
    if argv[:1] == ["subject"]:
        Path(argv[3]).write_text(json.dumps(subject(argv[1], json.loads(argv[2]))))
        return
    parser = argparse.ArgumentParser(prog="python -m bench.threads", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny settings: checks the plumbing (about a minute)")
    parser.add_argument("--out", type=Path, default=None, help="write the raw results here (JSON)")
    parser.add_argument("--modes", default=None, help=f"comma-separated subset of {','.join(MODES)} or spin-N")
    parser.add_argument("--loads", default=None, help="comma-separated busy-neighbour counts, each N or N:KIND "
                        f"(KIND one of {', '.join(NEIGHBOURS)}; default 0,1,2,2:single,2:anogen for the fit step, "
                        "0,1,2 for synth)")
    parser.add_argument("--workloads", default=None, help="comma-separated subset of fit,synth")
    parser.add_argument("--rounds", type=int, default=None, help="interleaved rounds of every setting (default 2)")
    parser.add_argument("--no-accelerate", action="store_true", help="skip the two-process fitting")
    args = parser.parse_args(argv)
    overrides: dict[str, Any] = {}
    if args.modes:
        overrides["modes"] = overrides["synth_modes"] = args.modes.split(",")
    if args.loads:
        overrides["loads"] = overrides["synth_loads"] = args.loads.split(",")
        for load in overrides["loads"]:
            parse_load(load)  # a typo fails now, not after the first measurements
    if args.workloads:
        overrides["workloads"] = args.workloads.split(",")
    if args.rounds:
        overrides["rounds"] = args.rounds
    if args.no_accelerate:
        overrides["accelerate"] = False
    import datetime as dt

    load_before = [round(x, 2) for x in os.getloadavg()]
    part = run(args.quick, **overrides)
    part["measured_at"] = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    part["load_average_before"] = load_before
    part["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    if args.out:
        args.out.write_text(json.dumps(part, indent=1))
    print("\n".join(section(part)))


if __name__ == "__main__":
    main()
