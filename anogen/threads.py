"""How many CPU threads torch may use: one policy, decided once at start-up, before torch is first used.

torch's default (one intra-op thread per logical core the OS reports) is right for a process that has the
machine to itself and very wrong for one that shares it: three anogen processes side by side on two cores,
each with two spinning OpenMP threads, made a toy fit step about 30x slower. The policy here asks what this
process may really use (its CPU affinity and the cgroup CPU quota of its container, not ``os.cpu_count()``),
divides that by the number of anogen processes launched together on this machine (``LOCAL_WORLD_SIZE`` under
``accelerate launch`` / ``torchrun``), and lets a user's explicit choice win, in this order:

1. ``--threads N`` (``requested``), 2. the ``ANOGEN_THREADS`` variable, 3. a user-set ``OMP_NUM_THREADS``,
4. the automatic choice above.

Idle OpenMP threads spin by default, which costs nearly everything on a shared machine and saves about half a
toy fit step on an idle one, so the wait is chosen from the machine's run queue at start-up: ``PASSIVE`` (sleep)
when other runnable threads and ours exceed the cores, the runtime's spin otherwise; a user's ``OMP_WAIT_POLICY``
or ``GOMP_SPINCOUNT`` wins. The wait changes no result, only speed; the thread count does not follow the load,
since it changes the last bits of float results.

:func:`decide` is pure (inputs in, decision out, with a reason), so it is testable without touching the process;
:func:`apply_thread_policy` reads the real process, exports the environment variables the OpenMP runtime reads
at load time (so they also reach every child process), and calls ``torch.set_num_threads`` /
``set_num_interop_threads`` - at once if torch is already imported, otherwise right after its first import
(a one-shot import hook), so that ``anogen --help`` still imports no torch.
"""

from __future__ import annotations

import logging
import math
import os
import sys
from collections.abc import Mapping, MutableMapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from anogen.errors import InputError

logger = logging.getLogger(__name__)

ENV_THREADS = "ANOGEN_THREADS"
# The OMP_NUM_THREADS value anogen itself exported: a child process that inherits it must not mistake it for the
# user's choice (it recomputes with its own LOCAL_WORLD_SIZE instead).
ENV_EXPORTED = "ANOGEN_THREADS_EXPORTED"
# Variables naming how many processes were launched together on this machine: torchrun / accelerate (GPU and
# CPU), Open MPI and Intel MPI / MPICH (accelerate's multi-CPU launcher uses mpirun).
LOCAL_SIZE_VARS = ("LOCAL_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_SIZE", "MPI_LOCALNRANKS")
# torch's CPU wheels ship GNU OpenMP (torch/lib/libgomp.so.1). PASSIVE makes its idle workers sleep at once
# instead of spinning up to GOMP_SPINCOUNT iterations at every barrier. Measured on a quiet 2-core machine
# (bench/threads.py, docs/troubleshooting.md "Several processes on one machine"): beside busy processes PASSIVE
# is 3-5x faster than any spin count tried, alone it is about 2x slower than the default spin (each of a toy fit
# step's many small parallel regions pays a wake-up). So the policy sleeps only where the machine is shared.
SHARED_WAIT_POLICY = "PASSIVE"
WAIT_VARS = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")
# The OMP_WAIT_POLICY value anogen exported (as ENV_EXPORTED for the threads): a child process re-decides.
ENV_WAIT_EXPORTED = "ANOGEN_WAIT_EXPORTED"
# BLAS libraries that may load beside torch (numpy's OpenBLAS, MKL) start one thread per core unless told.
BLAS_VARS = ("MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


@dataclass(frozen=True)
class ThreadPolicy:
    """The decision and what it was made from (``anogen env`` prints it).

    Args:
        threads (`int`): torch intra-op threads (and OpenMP threads) of this process.
        interop_threads (`int`): torch inter-op threads (the same budget; anogen runs no concurrent ops).
        source (`str`): what decided: ``"--threads"``, ``"ANOGEN_THREADS"``, ``"OMP_NUM_THREADS"`` or ``"auto"``.
        reason (`str`): one line saying why, with the numbers.
        cpu_count (`int`, *optional*): logical cores of the machine (``os.cpu_count()``), for information only.
        affinity (`int`, *optional*): cores this process may run on (``os.sched_getaffinity``); None if unknown.
        quota (`float`, *optional*): the cgroup CPU quota in CPUs (e.g. 1.5); None if unlimited or unknown.
        usable_cores (`int`): what the automatic choice starts from: min(affinity, floor(quota)), at least 1.
        local_world_size (`int`): processes launched together on this machine (1 when not launched).
        runnable_others (`int`, *optional*): other threads runnable on the machine when the policy was decided
            (None where the OS does not say, or where it was not needed: a user's wait, one thread).
        wait_policy (`str`, *optional*): the ``OMP_WAIT_POLICY`` in force (None: the runtime's default spin).
        wait_source (`str`): ``"anogen"`` (decided from the load) or ``"user"``.
        wait_reason (`str`): one line saying why.
    """

    threads: int
    interop_threads: int
    source: str
    reason: str
    cpu_count: int | None
    affinity: int | None
    quota: float | None
    usable_cores: int
    local_world_size: int
    runnable_others: int | None
    wait_policy: str | None
    wait_source: str
    wait_reason: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ------------------------------------------------------------------------------------------------ decision


def usable_cores(affinity: int | None, quota: float | None, cpu_count: int | None = None) -> int:
    """Cores a process may keep busy: its affinity, capped by a CPU quota rounded down, at least 1.

    A quota of 1.5 CPUs means one core's worth of work plus half of another's: two threads would be throttled
    for part of every period, so it counts as 1.
    """
    cores = affinity or cpu_count or 1
    if quota is not None and quota > 0:
        cores = min(cores, max(1, math.floor(quota)))
    return max(1, cores)


def local_world_size(env: Mapping[str, str]) -> int:
    """Processes launched together on this machine, from the launcher's variables (1 when none is set)."""
    for name in LOCAL_SIZE_VARS:
        value = env.get(name, "").strip()
        if value.isdigit() and int(value) >= 1:
            return int(value)
    return 1


def _positive_int(text: str) -> int | None:
    text = text.strip()
    return int(text) if text.isdigit() and int(text) >= 1 else None


def decide(
    *,
    affinity: int | None,
    quota: float | None,
    env: Mapping[str, str],
    requested: int | None = None,
    cpu_count: int | None = None,
    runnable_others: int | None = None,
) -> ThreadPolicy:
    """Decide the thread counts and the OpenMP wait from the given facts; reads nothing else (pure).

    Args:
        affinity (`int`, *optional*): cores in this process's CPU affinity mask.
        quota (`float`, *optional*): cgroup CPU quota in CPUs (quota / period); None when unlimited.
        env (`Mapping[str, str]`): the environment (``ANOGEN_THREADS``, ``OMP_NUM_THREADS``, ``LOCAL_WORLD_SIZE``,
            ``OMP_WAIT_POLICY``, ...).
        requested (`int`, *optional*): ``--threads``; wins over everything.
        cpu_count (`int`, *optional*): logical cores of the machine (the affinity stands in when it is unknown).
        runnable_others (`int`, *optional*): other threads runnable on the machine now (:func:`read_runnable_others`);
            None when unknown, which counts as shared.

    Raises:
        InputError: ``requested`` or ``ANOGEN_THREADS`` is not a whole number >= 1.
    """
    usable = usable_cores(affinity, quota, cpu_count)
    local = local_world_size(env)
    seen = f"{affinity if affinity is not None else cpu_count} cores in the affinity mask" + (
        f", cgroup quota {quota:g} CPUs" if quota is not None else ""
    )
    omp = env.get("OMP_NUM_THREADS", "")
    users_omp = omp.strip() != "" and omp != env.get(ENV_EXPORTED)
    if requested is not None:
        if isinstance(requested, bool) or not isinstance(requested, int) or requested < 1:
            raise InputError(f"--threads must be a whole number >= 1, got {requested!r}")
        threads, source, reason = requested, "--threads", f"--threads {requested}"
    elif env.get(ENV_THREADS, "").strip():
        value = _positive_int(env[ENV_THREADS])
        if value is None:
            raise InputError(
                f"{ENV_THREADS} must be a whole number >= 1, got {env[ENV_THREADS]!r}",
                hint=f"unset {ENV_THREADS} to let anogen choose from the cores it may use",
            )
        threads, source, reason = value, ENV_THREADS, f"{ENV_THREADS}={value}"
    elif users_omp and _positive_int(omp.split(",")[0]) is not None:
        # OMP_NUM_THREADS may be a list for nested levels ("4,2"); the first is the outer level torch uses.
        threads = _positive_int(omp.split(",")[0]) or 1
        setter = "the user or the launcher" if local > 1 else "the user"
        source, reason = "OMP_NUM_THREADS", f"OMP_NUM_THREADS={omp} set by {setter} (respected)"
        share = max(1, usable // local)
        if local > 1 and threads > share:
            # Under a launcher the variable is usually the launcher's, not the user's: accelerate sets it for every
            # process from the physical core count, blind to the affinity mask and the cgroup quota.
            reason = (f"OMP_NUM_THREADS={omp} capped at this process's share: {seen}, {usable} usable, shared by "
                      f"{local} local processes -> {share} each ({ENV_THREADS} overrides)")
            threads = share
    else:
        threads = max(1, usable // local)
        source = "auto"
        reason = f"{seen}: {usable} usable" + (
            f", shared by {local} local processes -> {threads} each" if local > 1 else f" -> {threads}"
        )
        if users_omp:
            reason += f" (OMP_NUM_THREADS={omp!r} is not a number: ignored)"
    users_wait = {name: env[name] for name in WAIT_VARS if env.get(name, "").strip()}
    if users_wait.get("OMP_WAIT_POLICY") == env.get(ENV_WAIT_EXPORTED) and "GOMP_SPINCOUNT" not in users_wait:
        users_wait = {}  # anogen's own, inherited from a parent process: decided afresh here
    if users_wait:
        wait_policy, wait_source = users_wait.get("OMP_WAIT_POLICY"), "user"
        wait_reason = " ".join(f"{name}={value}" for name, value in users_wait.items()) + " set by the user (respected)"
    else:
        wait_policy, wait_reason = choose_wait(threads, cpu_count or affinity or usable, runnable_others)
        wait_source = "anogen"
    return ThreadPolicy(threads=threads, interop_threads=threads, source=source, reason=reason, cpu_count=cpu_count,
                        affinity=affinity, quota=quota, usable_cores=usable, local_world_size=local,
                        runnable_others=runnable_others, wait_policy=wait_policy, wait_source=wait_source,
                        wait_reason=wait_reason)


def choose_wait(threads: int, machine_cores: int, runnable_others: int | None) -> tuple[str | None, str]:
    """The OpenMP wait for ``threads`` threads: PASSIVE where the machine is shared, else the runtime's spin.

    Shared means other runnable threads plus ours exceed the machine's cores: a spinning thread then holds a core
    that the thread it waits for (or a neighbour) needs. ``runnable_others`` counts the whole machine (the kernel's
    run queue), so it is compared with the machine's cores, not the affinity. A process that starts alone keeps
    spinning when neighbours start later: set ``OMP_WAIT_POLICY=PASSIVE`` on runners that are always shared.

    Returns:
        (``"PASSIVE"`` or None for the runtime's default, a one-line reason).
    """
    if threads <= 1:
        return None, "one thread: no OpenMP worker waits"
    if runnable_others is None:
        return SHARED_WAIT_POLICY, "the machine's load is unknown: idle threads sleep (safe when it is shared)"
    seen = f"{runnable_others} other runnable threads + {threads} of ours on {machine_cores} cores"
    if runnable_others + threads > machine_cores:
        return SHARED_WAIT_POLICY, f"{seen}: shared, idle threads sleep"
    return None, f"{seen}: idle machine, the OpenMP runtime's spinning wait (fastest alone)"


# ------------------------------------------------------------------------------------- reading the process


def read_affinity() -> int | None:
    """Cores this process may run on (None where the OS does not say, e.g. macOS)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return None


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def _v2_quota(folder: Path) -> float | None:
    text = _read(folder / "cpu.max")  # "max 100000" (unlimited) or "150000 100000" (1.5 CPUs)
    if not text:
        return None
    parts = text.split()
    if len(parts) != 2 or parts[0] == "max" or not parts[0].isdigit() or not parts[1].isdigit() or parts[1] == "0":
        return None
    return int(parts[0]) / int(parts[1])


def _v1_quota(folder: Path) -> float | None:
    quota, period = _read(folder / "cpu.cfs_quota_us"), _read(folder / "cpu.cfs_period_us")
    if not quota or not period or not quota.lstrip("-").isdigit() or not period.isdigit():
        return None
    if int(quota) <= 0 or int(period) == 0:  # -1: unlimited
        return None
    return int(quota) / int(period)


def read_cpu_quota(root: Path = Path("/sys/fs/cgroup"), self_cgroup: Path = Path("/proc/self/cgroup")) -> float | None:
    """The tightest cgroup CPU quota on this process's cgroup and its ancestors, in CPUs (None: unlimited).

    cgroup v2 keeps it in ``cpu.max``; v1 in ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us`` under the ``cpu``
    controller's mount. A limit set on a parent cgroup binds the children too, hence the walk up to the root.
    Inside a container the process's cgroup is usually mounted as the root itself (path ``/``).
    """
    lines = (_read(self_cgroup) or "").splitlines()
    found: list[float] = []
    for line in lines:
        fields = line.split(":", 2)
        if len(fields) != 3:
            continue
        _, controllers, rel = fields
        if controllers == "":  # v2 unified hierarchy
            base, reader = root, _v2_quota
        elif "cpu" in controllers.split(","):
            base = next((root / name for name in (controllers, "cpu,cpuacct", "cpuacct,cpu", "cpu")
                         if (root / name).is_dir()), None)
            if base is None:
                continue
            reader = _v1_quota
        else:
            continue
        folder = base / rel.lstrip("/")
        if not folder.is_dir():  # the cgroup path is not visible from here: look at the mount root only
            folder = base
        while True:
            value = reader(folder)
            if value is not None:
                found.append(value)
            if folder == base or base not in folder.parents:
                break
            folder = folder.parent
    if not lines and (root / "cpu.max").is_file():
        value = _v2_quota(root)
        if value is not None:
            found.append(value)
    return min(found) if found else None


def read_runnable_others(loadavg: Path = Path("/proc/loadavg"), readings: int = 5, gap_s: float = 0.004) -> int | None:
    """Threads runnable on the machine now besides this one: the median of a few readings (None: not Linux).

    The fourth field of ``/proc/loadavg`` is "runnable/total" scheduling entities at this instant, the reader
    included. Unlike the load averages it does not lag: a neighbour that stopped a second ago is not counted.
    A busy neighbour is runnable in every reading, a passing kernel thread or a process that is exiting in one:
    the median keeps the first and drops the second (the most of three readings once chose PASSIVE on an idle
    machine and cost that run 2x).
    """
    import statistics
    import time

    seen: list[int] = []
    for i in range(readings):
        fields = (_read(loadavg) or "").split()
        running = fields[3].split("/")[0] if len(fields) > 3 else ""
        if not running.isdigit():
            return None
        seen.append(max(0, int(running) - 1))
        if i + 1 < readings:
            time.sleep(gap_s)
    return int(statistics.median_low(seen)) if seen else None


def current_policy(requested: int | None = None, env: Mapping[str, str] | None = None) -> ThreadPolicy:
    """:func:`decide` on this process's real affinity, cgroup quota, machine load and environment (changes nothing).

    The run queue is read (a few milliseconds of readings) only when the wait is anogen's to choose and more than
    one thread could wait; otherwise ``runnable_others`` stays None.
    """
    facts = dict(affinity=read_affinity(), quota=read_cpu_quota(), env=os.environ if env is None else env,
                 requested=requested, cpu_count=os.cpu_count())
    policy = decide(**facts)
    if policy.wait_source == "anogen" and policy.threads > 1:
        policy = decide(**facts, runnable_others=read_runnable_others())
    return policy


# ------------------------------------------------------------------------------------------------ applying

_applied: ThreadPolicy | None = None


def applied_policy() -> ThreadPolicy | None:
    """The policy :func:`apply_thread_policy` applied in this process (None if it was never called)."""
    return _applied


def apply_thread_policy(requested: int | None = None, env: MutableMapping[str, str] | None = None) -> ThreadPolicy:
    """Decide the policy for this process and apply it; call it once, at start-up (the CLI does).

    Exports ``OMP_NUM_THREADS`` (and ``MKL_NUM_THREADS`` / ``OPENBLAS_NUM_THREADS`` unless set) and, on a shared
    machine, ``OMP_WAIT_POLICY=PASSIVE``, which the runtimes read when they load, so child processes get them too;
    then sets torch's intra- and inter-op threads, now if torch is imported, else right after its first import.
    Calling it again re-decides and re-applies the intra-op threads (inter-op threads can only be set once per process).

    Raises:
        InputError: ``requested`` or ``ANOGEN_THREADS`` is not a whole number >= 1.
    """
    global _applied
    env = os.environ if env is None else env
    policy = current_policy(requested, env)
    if policy.source != "OMP_NUM_THREADS" or env.get("OMP_NUM_THREADS", "").split(",")[0] != str(policy.threads):
        # Ours (or a launcher's value capped): marked, so that a child process recomputes its own share. A user's
        # value kept as it is stays unmarked, and children respect it too.
        env["OMP_NUM_THREADS"] = str(policy.threads)
        env[ENV_EXPORTED] = str(policy.threads)
    for name in BLAS_VARS:
        env.setdefault(name, str(policy.threads))
    if policy.wait_source == "anogen":
        if policy.wait_policy:
            env["OMP_WAIT_POLICY"] = env[ENV_WAIT_EXPORTED] = policy.wait_policy
        elif env.get(ENV_WAIT_EXPORTED):  # a parent's choice, not ours: the runtime's default here
            env.pop("OMP_WAIT_POLICY", None)
            env.pop(ENV_WAIT_EXPORTED, None)
    _applied = policy
    if "torch" in sys.modules:
        configure_torch(policy)
    else:
        _install_import_hook()
    logger.debug("threads: %s (%s)", policy.threads, policy.reason)
    return policy


def configure_torch(policy: ThreadPolicy) -> None:
    """Give torch the policy's thread counts (torch must be imported)."""
    import torch

    # Only when torch's count differs (it read OMP_NUM_THREADS, which the policy exports before torch loads, so
    # usually it does not): torch.set_num_threads also turns MKL's dynamic threading off, which made the toy's
    # small matmuls about 20 % slower alone (bench/threads.py).
    if torch.get_num_threads() != policy.threads:
        torch.set_num_threads(policy.threads)
    if torch.get_num_interop_threads() != policy.interop_threads:
        try:
            torch.set_num_interop_threads(policy.interop_threads)
        except RuntimeError:  # already set, or inter-op work has started: the pool's size is fixed for good
            logger.debug("torch inter-op threads already fixed at %s", torch.get_num_interop_threads())


class _ThenConfigure:
    """Wraps torch's loader: runs it, then configures torch; everything else goes to the original loader."""

    def __init__(self, loader: Any) -> None:
        self._loader = loader

    def create_module(self, spec: Any) -> Any:
        return self._loader.create_module(spec)

    def exec_module(self, module: Any) -> None:
        self._loader.exec_module(module)
        if _applied is not None:
            configure_torch(_applied)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._loader, name)


class _TorchImportHook:
    """A one-shot ``sys.meta_path`` finder: finds ``torch`` through the other finders and wraps its loader."""

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> Any:
        if fullname != "torch":
            return None
        _remove_import_hook()
        for finder in list(sys.meta_path):
            find = getattr(finder, "find_spec", None)
            spec = find(fullname, path, target) if find is not None else None
            if spec is not None:
                if spec.loader is not None and hasattr(spec.loader, "exec_module"):
                    spec.loader = _ThenConfigure(spec.loader)
                return spec
        return None


def _install_import_hook() -> None:
    if not any(isinstance(f, _TorchImportHook) for f in sys.meta_path):
        sys.meta_path.insert(0, _TorchImportHook())


def _remove_import_hook() -> None:
    sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, _TorchImportHook)]
