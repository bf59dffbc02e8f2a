"""The thread policy (anogen/threads.py): the pure decision, the cgroup readers, applying it, and the CLI."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from anogen import threads
from anogen.errors import InputError
from anogen.threads import ENV_EXPORTED, decide, read_cpu_quota, usable_cores

ROOT = Path(__file__).resolve().parents[1]
THREAD_VARS = ("OMP_NUM_THREADS", "ANOGEN_THREADS", ENV_EXPORTED, "LOCAL_WORLD_SIZE", "OMP_WAIT_POLICY",
               "GOMP_SPINCOUNT", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


# ------------------------------------------------------------------------------------------- the decision


def test_quota_of_one_and_a_half_cpus_on_four_cores_gives_one_thread():
    policy = decide(affinity=4, quota=1.5, env={})
    assert (policy.threads, policy.interop_threads, policy.source) == (1, 1, "auto")
    assert policy.usable_cores == 1 and "quota 1.5" in policy.reason


def test_two_local_processes_on_two_cores_get_one_thread_each():
    policy = decide(affinity=2, quota=None, env={"LOCAL_WORLD_SIZE": "2"})
    assert (policy.threads, policy.local_world_size) == (1, 2)
    assert "2 local processes" in policy.reason
    # and alone on the same cores: both
    assert decide(affinity=2, quota=None, env={}).threads == 2


def test_the_launchers_of_mpi_count_as_local_processes():
    assert decide(affinity=8, quota=None, env={"OMPI_COMM_WORLD_LOCAL_SIZE": "4"}).threads == 2
    assert decide(affinity=8, quota=None, env={"MPI_LOCALNRANKS": "3"}).threads == 2


def test_a_users_omp_num_threads_is_respected():
    policy = decide(affinity=2, quota=None, env={"OMP_NUM_THREADS": "3"})
    assert (policy.threads, policy.source) == (3, "OMP_NUM_THREADS")
    # a list for nested levels: the outer one
    assert decide(affinity=8, quota=None, env={"OMP_NUM_THREADS": "4,2"}).threads == 4


def test_threads_flag_wins_over_everything():
    env = {"OMP_NUM_THREADS": "3", "ANOGEN_THREADS": "5", "LOCAL_WORLD_SIZE": "2"}
    policy = decide(affinity=2, quota=1.0, env=env, requested=4)
    assert (policy.threads, policy.interop_threads, policy.source) == (4, 4, "--threads")


def test_anogen_threads_wins_over_omp_num_threads():
    policy = decide(affinity=2, quota=None, env={"OMP_NUM_THREADS": "3", "ANOGEN_THREADS": "5"})
    assert (policy.threads, policy.source) == (5, "ANOGEN_THREADS")


@pytest.mark.parametrize("bad", ["0", "-2", "two", "1.5"])
def test_bad_anogen_threads_is_an_input_error(bad):
    with pytest.raises(InputError, match="ANOGEN_THREADS must be a whole number"):
        decide(affinity=2, quota=None, env={"ANOGEN_THREADS": bad})


@pytest.mark.parametrize("bad", [0, -1, True])
def test_bad_threads_flag_is_an_input_error(bad):
    with pytest.raises(InputError, match="--threads"):
        decide(affinity=2, quota=None, env={}, requested=bad)


def test_an_omp_num_threads_anogen_exported_is_not_the_users():
    # A child of an anogen process inherits OMP_NUM_THREADS=2 with the marker; launched as one of two local
    # processes it must recompute its share instead of keeping the parent's whole-machine count.
    env = {"OMP_NUM_THREADS": "2", ENV_EXPORTED: "2", "LOCAL_WORLD_SIZE": "2"}
    policy = decide(affinity=2, quota=None, env=env)
    assert (policy.threads, policy.source) == (1, "auto")


def test_a_launchers_omp_num_threads_is_capped_at_the_processs_share():
    # accelerate sets OMP_NUM_THREADS from the physical core count, blind to a container's quota
    policy = decide(affinity=16, quota=4.0, env={"OMP_NUM_THREADS": "8", "LOCAL_WORLD_SIZE": "2"})
    assert (policy.threads, policy.source) == (2, "OMP_NUM_THREADS") and "capped" in policy.reason
    # within the share it is kept as it is
    assert decide(affinity=16, quota=4.0, env={"OMP_NUM_THREADS": "1", "LOCAL_WORLD_SIZE": "2"}).threads == 1


def test_a_non_numeric_omp_num_threads_is_ignored_with_a_reason():
    policy = decide(affinity=2, quota=None, env={"OMP_NUM_THREADS": "many"})
    assert (policy.threads, policy.source) == (2, "auto") and "ignored" in policy.reason


def test_usable_cores_takes_the_tighter_of_affinity_and_quota():
    assert usable_cores(8, 2.9) == 2
    assert usable_cores(2, 6.0) == 2
    assert usable_cores(4, 0.5) == 1  # half a CPU still runs one thread
    assert usable_cores(None, None, cpu_count=6) == 6  # no affinity API (macOS): the machine's count


def test_wait_sleeps_where_the_machine_is_shared_and_spins_where_it_is_idle():
    idle = decide(affinity=2, quota=None, env={}, cpu_count=2, runnable_others=0)
    assert (idle.wait_policy, idle.wait_source) == (None, "anogen") and "idle machine" in idle.wait_reason
    # One busy neighbour thread + our two on two cores: a spinning thread would hold a core the others need.
    shared = decide(affinity=2, quota=None, env={}, cpu_count=2, runnable_others=1)
    assert (shared.wait_policy, shared.wait_source) == ("PASSIVE", "anogen") and "shared" in shared.wait_reason
    # Two neighbours on an 8-core machine leave room for our 4 threads.
    assert decide(affinity=4, quota=None, env={}, cpu_count=8, runnable_others=2).wait_policy is None
    assert decide(affinity=4, quota=None, env={}, cpu_count=8, runnable_others=5).wait_policy == "PASSIVE"
    unknown = decide(affinity=2, quota=None, env={}, cpu_count=2, runnable_others=None)
    assert unknown.wait_policy == "PASSIVE"  # no run queue to read (not Linux): the safe choice when shared
    one = decide(affinity=2, quota=None, env={"ANOGEN_THREADS": "1"}, cpu_count=2, runnable_others=6)
    assert one.wait_policy is None and "one thread" in one.wait_reason  # nothing waits: nothing to change


def test_a_users_wait_setting_wins_and_an_inherited_one_is_decided_afresh():
    active = decide(affinity=2, quota=None, env={"OMP_WAIT_POLICY": "ACTIVE"}, runnable_others=5)
    assert (active.wait_policy, active.wait_source) == ("ACTIVE", "user")
    spin = decide(affinity=2, quota=None, env={"GOMP_SPINCOUNT": "10000"}, runnable_others=5)
    assert (spin.wait_policy, spin.wait_source) == (None, "user") and "GOMP_SPINCOUNT=10000" in spin.wait_reason
    inherited = {"OMP_WAIT_POLICY": "PASSIVE", threads.ENV_WAIT_EXPORTED: "PASSIVE"}
    child = decide(affinity=2, quota=None, env=inherited, cpu_count=2, runnable_others=0)
    assert (child.wait_policy, child.wait_source) == (None, "anogen")


def test_runnable_others_reads_the_run_queue_without_counting_the_reader(tmp_path, monkeypatch):
    loadavg = tmp_path / "loadavg"
    loadavg.write_text("3.91 2.10 1.05 5/312 48211\n")
    assert threads.read_runnable_others(loadavg, readings=2, gap_s=0) == 4
    loadavg.write_text("0.00 0.01 0.05 1/120 77\n")
    assert threads.read_runnable_others(loadavg, readings=1) == 0
    loadavg.write_text("garbled\n")
    assert threads.read_runnable_others(loadavg) is None
    assert threads.read_runnable_others(tmp_path / "missing") is None
    # A thread runnable in one reading of five (a kernel thread, an exiting process) is not a busy neighbour.
    counts = iter(["1/200", "3/200", "1/200", "1/200", "2/200"])
    monkeypatch.setattr(threads, "_read", lambda path: f"0.1 0.1 0.1 {next(counts)} 9")
    assert threads.read_runnable_others(loadavg, readings=5, gap_s=0) == 0


# -------------------------------------------------------------------------------------- cgroup quota files


def _tree(tmp_path: Path, files: dict[str, str], self_cgroup: str) -> tuple[Path, Path]:
    root = tmp_path / "cgroup"
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    root.mkdir(exist_ok=True)
    proc = tmp_path / "proc_self_cgroup"
    proc.write_text(self_cgroup)
    return root, proc


def test_cgroup_v2_quota_is_read_from_cpu_max(tmp_path):
    root, proc = _tree(tmp_path, {"cpu.max": "150000 100000\n"}, "0::/\n")
    assert read_cpu_quota(root, proc) == pytest.approx(1.5)


def test_cgroup_v2_unlimited_is_none(tmp_path):
    root, proc = _tree(tmp_path, {"cpu.max": "max 100000\n"}, "0::/\n")
    assert read_cpu_quota(root, proc) is None


def test_cgroup_v2_a_parents_tighter_limit_binds_the_child(tmp_path):
    files = {"cpu.max": "max 100000", "ci/cpu.max": "200000 100000", "ci/job/cpu.max": "max 100000"}
    root, proc = _tree(tmp_path, files, "0::/ci/job\n")
    assert read_cpu_quota(root, proc) == pytest.approx(2.0)


def test_cgroup_v1_quota_and_period(tmp_path):
    files = {"cpu,cpuacct/cpu.cfs_quota_us": "50000", "cpu,cpuacct/cpu.cfs_period_us": "100000",
             "memory/memory.limit_in_bytes": "1"}
    root, proc = _tree(tmp_path, files, "4:memory:/\n3:cpu,cpuacct:/\n")
    assert read_cpu_quota(root, proc) == pytest.approx(0.5)


def test_cgroup_v1_minus_one_is_unlimited(tmp_path):
    files = {"cpu/cpu.cfs_quota_us": "-1", "cpu/cpu.cfs_period_us": "100000"}
    root, proc = _tree(tmp_path, files, "2:cpu:/\n")
    assert read_cpu_quota(root, proc) is None


def test_no_cgroup_files_means_no_quota(tmp_path):
    root, proc = _tree(tmp_path, {}, "")
    assert read_cpu_quota(root, proc) is None


# ------------------------------------------------------------------------------------------ in a process


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in THREAD_VARS}
    env.update(PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1", **extra)
    return env


def test_applied_before_torch_loads_torch_gets_the_threads_on_its_first_import():
    # OMP_NUM_THREADS is changed after the policy was applied, so torch can only end up with 3 intra- and
    # inter-op threads (torch's default inter-op count is the core count) if the import hook set them.
    code = ("import os, sys\n"
            "from anogen.threads import apply_thread_policy\n"
            "policy = apply_thread_policy()\n"
            "assert 'torch' not in sys.modules\n"
            "exported = (os.environ['OMP_NUM_THREADS'], os.environ.get('OMP_WAIT_POLICY', 'spin'))\n"
            "os.environ['OMP_NUM_THREADS'] = '1'\n"
            "import torch\n"
            "print(policy.threads, torch.get_num_threads(), torch.get_num_interop_threads(), *exported,\n"
            "      policy.wait_policy or 'spin')\n")
    out = subprocess.run([sys.executable, "-c", code], env=_env(ANOGEN_THREADS="3"), capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    *counts, exported_wait, decided_wait = out.stdout.split()
    assert counts == ["3", "3", "3", "3"]
    assert exported_wait == decided_wait  # exported exactly when the policy chose to sleep (it depends on the load)


def test_applied_after_torch_loaded_it_sets_the_threads_at_once():
    code = ("import torch\n"
            "from anogen.threads import apply_thread_policy\n"
            "apply_thread_policy(requested=3)\n"
            "print(torch.get_num_threads())\n")
    out = subprocess.run([sys.executable, "-c", code], env=_env(), capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["3"]


def _anogen_env(args: list[str], prefix: list[str] | None = None, **extra: str) -> dict:
    cmd = [*(prefix or []), sys.executable, "-m", "anogen", *args, "env", "--json"]
    out = subprocess.run(cmd, env=_env(**extra), capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


@pytest.mark.skipif(shutil.which("taskset") is None, reason="needs taskset (util-linux)")
def test_env_under_taskset_to_one_core_reports_one_thread():
    info = _anogen_env([], prefix=["taskset", "-c", "0"])
    assert info["affinity_cores"] == 1
    assert (info["threads_chosen"], info["threads_source"]) == (1, "auto")
    assert info["cpu_threads"] == 1 and info["interop_threads"] == 1


def test_threads_option_reaches_torch_and_env_says_why():
    info = _anogen_env(["--threads", "3"], OMP_NUM_THREADS="1", OMP_WAIT_POLICY="PASSIVE")
    assert (info["threads_chosen"], info["threads_source"], info["threads_reason"]) == (3, "--threads", "--threads 3")
    assert info["cpu_threads"] == 3 and info["interop_threads"] == 3
    assert info["omp_wait_policy"] == "PASSIVE (user)"  # set by the test: respected, not decided from the load


def test_bad_thread_settings_exit_2_with_one_line():
    flag = subprocess.run([sys.executable, "-m", "anogen", "--threads", "0", "env"], env=_env(), capture_output=True,
                          text=True, cwd=ROOT, timeout=120)
    assert flag.returncode == 2 and "--threads" in flag.stderr
    var = subprocess.run([sys.executable, "-m", "anogen", "env"], env=_env(ANOGEN_THREADS="lots"),
                         capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert var.returncode == 2 and "ANOGEN_THREADS must be a whole number" in var.stderr
    assert "Traceback" not in var.stderr


def test_apply_exports_the_decision_for_child_processes_and_keeps_a_users_value(monkeypatch):
    import anogen.threads as threads

    monkeypatch.setattr(threads, "read_affinity", lambda: 4)
    monkeypatch.setattr(threads, "read_cpu_quota", lambda: None)
    monkeypatch.setattr(threads, "configure_torch", lambda policy: None)
    monkeypatch.setattr(threads, "_install_import_hook", lambda: None)
    monkeypatch.setattr(threads, "read_runnable_others", lambda: 3)
    env: dict[str, str] = {"LOCAL_WORLD_SIZE": "2", "OMP_NUM_THREADS": "8"}  # a launcher's value, over the share
    policy = threads.apply_thread_policy(env=env)
    assert policy.threads == 2 and env["OMP_NUM_THREADS"] == "2" and env[ENV_EXPORTED] == "2"
    assert env["MKL_NUM_THREADS"] == "2" and env["OMP_WAIT_POLICY"] == "PASSIVE"
    monkeypatch.setattr(threads, "read_runnable_others", lambda: 0)  # a child on a machine that became idle
    monkeypatch.setattr(threads, "read_affinity", lambda: 2)
    child = {**env, "LOCAL_WORLD_SIZE": "1"}
    threads.apply_thread_policy(env=child)
    assert "OMP_WAIT_POLICY" not in child and threads.ENV_WAIT_EXPORTED not in child
    users = {"OMP_NUM_THREADS": "3", "OMP_WAIT_POLICY": "ACTIVE"}
    assert threads.apply_thread_policy(env=users).threads == 3
    assert users["OMP_NUM_THREADS"] == "3" and ENV_EXPORTED not in users and users["OMP_WAIT_POLICY"] == "ACTIVE"


def test_the_run_queue_is_read_only_when_the_wait_is_anogens_to_choose(monkeypatch):
    def no_reading() -> int:
        raise AssertionError("the run queue was read")

    monkeypatch.setattr(threads, "read_runnable_others", no_reading)
    monkeypatch.setattr(threads, "read_affinity", lambda: 2)
    monkeypatch.setattr(threads, "read_cpu_quota", lambda: None)
    monkeypatch.setattr(threads.os, "cpu_count", lambda: 2)
    assert threads.current_policy(env={"OMP_WAIT_POLICY": "ACTIVE"}).wait_source == "user"
    assert threads.current_policy(env={"ANOGEN_THREADS": "1"}).runnable_others is None
    monkeypatch.setattr(threads, "read_runnable_others", lambda: 4)
    assert threads.current_policy(env={}).wait_policy == "PASSIVE"


def test_torch_is_told_its_threads_only_when_its_count_differs(monkeypatch: pytest.MonkeyPatch) -> None:
    """torch.set_num_threads also turns MKL's dynamic threading off (slower small matmuls alone), so the policy
    calls it only when torch did not already take the count from OMP_NUM_THREADS."""
    import dataclasses

    import torch

    calls: list[int] = []
    monkeypatch.setattr(torch, "set_num_threads", calls.append)
    current = torch.get_num_threads()
    policy = threads.current_policy(requested=current, env={})
    threads.configure_torch(dataclasses.replace(policy, interop_threads=torch.get_num_interop_threads()))
    assert calls == []
    threads.configure_torch(dataclasses.replace(policy, threads=current + 1,
                                                interop_threads=torch.get_num_interop_threads()))
    assert calls == [current + 1]
