"""Placing the files of an export: reading each source once, copying/linking/converting, the journal, workers.

:func:`write_planned` puts one planned file in place (the source's bytes as they are when they already are what
the export would write, else a conversion); :class:`Workers` runs conversions and copies in worker processes
when many are left; :class:`Journal` records finished files for a resumed run. Every file goes through a temp name and a
rename (:func:`anogen.io.write_bytes_replace`): a killed process never leaves a half-written file at a final path.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from pathlib import Path
from typing import Any, NamedTuple

from anogen.errors import DataError
from anogen.export.config import ExportConfig
from anogen.export.pixels import render_image, render_mask
from anogen.export.planning import PlannedFile, image_target, json_str
from anogen.export.probe import Probe, SourceCache, linkable, probe
from anogen.io import SCHEMA_VERSION, encode_png, replacing, sync_filesystem, write_bytes_replace

logger = logging.getLogger(__name__)

# The journal of an export in progress, in its root; it also marks the folder as an (interrupted) anogen export.
JOURNAL = ".anogen-export.journal.jsonl"
# Journal rows are appended (and flushed to the kernel) every this many files or seconds.
CHECKPOINT_FILES = 1000
CHECKPOINT_S = 2.0
# Conversions and copies go to worker processes only when at least this many files are left: starting one costs
# ~0.5 s. Files placed as they are go to a worker this many at a time.
POOL_MIN_FILES = 256
BATCH_FILES = 128
# Start the file system's writeback in the background at every checkpoint (see Writeback).
BACKGROUND_WRITEBACK = True
_READ = os.O_RDONLY | getattr(os, "O_CLOEXEC", 0)
_CREATE = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_CLOEXEC", 0)


class Written(NamedTuple):
    """One file put in place: how, its size and sha256."""

    placed: str
    bytes: int
    sha256: str


def read_source(path: str, size: int) -> bytes:
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    try:
        # Asking for one byte more than the file holds: a short read is the end, with no second call to see it.
        data = os.read(fd, size + 1)
        if len(data) <= size:
            return data
        chunks = [data]
        while chunks[-1]:
            chunks.append(os.read(fd, 1 << 20))
    finally:
        os.close(fd)
    return b"".join(chunks)


class Sources:
    """stat, sha256 and probe of every source, each file read at most once (and not at all on a cache hit)."""

    def __init__(self, cache: SourceCache) -> None:
        self.cache = cache
        self.stats: dict[str, os.stat_result] = {}
        self.facts: dict[str, Probe] = {}

    def stat(self, path: str) -> os.stat_result:
        st = self.stats.get(path)
        if st is None:
            try:
                st = self.stats[path] = os.stat(path)
            except FileNotFoundError:
                raise DataError(f"{path} is missing (a source of the export)", path=path) from None
        return st

    def get(self, path: str, need_binary: bool) -> tuple[Probe, bytes | None]:
        """The facts of ``path`` and, when it had to be read now, its bytes."""
        facts = self.facts.get(path)
        if facts is not None and not (need_binary and facts.binary is None and facts.png and facts.png[2] == "L"):
            return facts, None
        st = self.stat(path)
        facts = self.cache.get(path, st, need_binary)
        if facts is not None:
            self.facts[path] = facts
            return facts, None
        data = read_source(path, st.st_size)
        facts = self.facts[path] = probe(data, need_binary=need_binary)
        self.cache.put(path, st, facts)
        return facts, data


# ------------------------------------------------------------------------------------------ placing files


def _tmp_path(dst: str) -> str:
    head, name = os.path.split(dst)
    return f"{head}/.{name}.{os.getpid()}.tmp"


def _convert(src: Path, dst: str, role: str, size: tuple[int, int], mode: str) -> Written:
    """Render ``src`` as the export writes it (mask: 0/255 nearest; image: ``mode`` bicubic) into ``dst``."""
    data = encode_png(render_mask(src, size) if role == "mask" else render_image(src, size, mode))
    write_bytes_replace(dst, data, tmp=_tmp_path(dst))
    return Written("converted", len(data), hashlib.sha256(data).hexdigest())


def _convert_job(src: str, dst: str, role: str, size: tuple[int, int], mode: str) -> Written:
    """:func:`_convert` in a worker process (plain arguments)."""
    return _convert(Path(src), dst, role, size, mode)


def _link_into_place(src: str, dst: str) -> None:
    """Hard-link ``src`` at ``dst``: directly when ``dst`` is free (a link appears complete, there is nothing to
    tear), else through a temp name and a rename over the old file."""
    try:
        os.link(src, dst)
        return
    except FileExistsError:
        pass
    tmp = _tmp_path(dst)
    with replacing(tmp, dst):
        os.link(src, tmp)


def _copy_into_place(src: str, dst: str, size: int) -> int:
    """Copy ``src`` to ``dst`` through a temp name, inside the kernel (``sendfile``: no bytes pass through
    Python); returns the bytes copied. The file gets the mode ``open()`` would give under the umask."""
    tmp = _tmp_path(dst)
    fd_out = os.open(tmp, _CREATE, 0o666)
    with replacing(tmp, dst):
        try:
            fd_in = os.open(src, _READ)
            try:
                copied = _send_all(fd_in, fd_out, size)
            finally:
                os.close(fd_in)
        finally:
            os.close(fd_out)
    return copied


def _send_all(fd_in: int, fd_out: int, size: int) -> int:
    """Every byte of ``fd_in`` into ``fd_out``. The first call asks for one byte more than ``size``: a file that
    still has the size it was stat'ed with is then copied in one call, its end found without a second one."""
    if not hasattr(os, "sendfile"):
        return _read_write_all(fd_in, fd_out)
    copied, want, first = 0, size + 1, True
    while True:
        try:
            sent = os.sendfile(fd_out, fd_in, None, want)
        except OSError as exc:
            if exc.errno not in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP) or copied:
                raise
            return _read_write_all(fd_in, fd_out)  # no sendfile into a file here (some file systems)
        copied += sent
        # A regular file gives less than asked for only at its end.
        if sent == 0 or (first and sent == size):
            return copied
        want, first = 1 << 20, False


def _read_write_all(fd_in: int, fd_out: int) -> int:
    copied = 0
    while chunk := os.read(fd_in, 1 << 20):
        view = memoryview(chunk)
        while view:
            view = view[os.write(fd_out, view) :]
        copied += len(chunk)
    return copied


def write_planned(
    pf: PlannedFile, out: Path, link: str, *, data: bytes | None = None, facts: Probe | None = None,
    size: int | None = None,
) -> Written:
    """Write one planned file under ``out``: placed as is (copy, hard link, symlink) when it needs no conversion.

    ``data`` and ``facts`` are the source's bytes and probe when the caller has them already; ``size`` its size
    (from the caller's ``stat``).
    """
    src = str(pf.src)
    if facts is None:
        if data is None:
            data = read_source(src, os.stat(src).st_size)
        facts = probe(data, need_binary=pf.role == "mask")
    dst = f"{out}/{pf.rel}"
    if not linkable(facts, pf.role, pf.size, pf.mode):
        return _convert(pf.src, dst, pf.role, pf.size or image_target(pf.src, None), pf.mode)
    if data is not None and link == "copy":
        write_bytes_replace(dst, data, tmp=_tmp_path(dst))
        return Written("copy", len(data), facts.sha256)
    if size is None:
        size = len(data) if data is not None else os.stat(src).st_size
    placed, nbytes = _place_as_is(src, dst, size, link)
    return Written(placed, nbytes, facts.sha256)


def _place_as_is(src: str, dst: str, size: int, link: str) -> tuple[str, int]:
    """Put ``src`` at ``dst`` unchanged (``link``: copy, hardlink or symlink; a hard link that the file system
    refuses becomes a copy); returns how it was placed and the bytes at ``dst``."""
    if link == "hardlink":
        try:
            _link_into_place(src, dst)
            return "hardlink", size
        except OSError as exc:
            # EXDEV (another file system), EPERM (FAT, some network shares): a copy is always possible.
            logger.info("hard link %s -> %s failed (%s); copying", src, dst, errno.errorcode.get(exc.errno, exc))
    elif link == "symlink":
        tmp = _tmp_path(dst)
        with replacing(tmp, dst):
            os.symlink(os.path.realpath(src), tmp)
        return "symlink", os.stat(dst).st_size
    return "copy", _copy_into_place(src, dst, size)


def _copy_batch(jobs: list[tuple[str, str, int]]) -> list[int]:
    """:func:`_copy_into_place` for each ``(src, dst, size)``, in a worker process: the bytes copied."""
    return [_copy_into_place(*job) for job in jobs]


class Writeback:
    """The file system's writeback of what an export has written so far, started in a background thread at the
    journal's checkpoints (one sync in flight at a time), so that the one sync before ``export.json`` finds little
    left to wait for. It promises nothing by itself: that sync is what makes the export durable."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.thread: threading.Thread | None = None

    def start(self) -> None:
        if not BACKGROUND_WRITEBACK or (self.thread is not None and self.thread.is_alive()):
            return
        # The sync runs in C with the GIL released: the export goes on meanwhile.
        self.thread = threading.Thread(target=sync_filesystem, args=(self.path,), name="anogen-writeback",
                                       daemon=True)
        self.thread.start()

    def wait(self) -> None:
        if self.thread is not None:
            self.thread.join()


class Journal:
    """The journal of an export in progress: rows buffered and appended at checkpoints."""

    def __init__(self, out: Path, fmt: str, fresh: bool, on_checkpoint: Callable[[], None] | None = None) -> None:
        path = out / JOURNAL
        if fresh:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        new = not path.is_file() or path.stat().st_size == 0
        self.handle = open(path, "a", encoding="utf-8")  # noqa: SIM115 - closed by close()
        if new:
            # The first line names the format, so another format's export can tell this folder is taken.
            self.handle.write(json.dumps({"format": fmt, "schema_version": SCHEMA_VERSION}) + "\n")
            self.handle.flush()
        self.pending: list[str] = []
        self.last = time.monotonic()
        self.on_checkpoint = on_checkpoint

    def add(self, row: dict[str, Any]) -> None:
        # Spelled out (one row per file): the same JSON object json.dumps would write, several times faster.
        self.pending.append(
            f'{{"bytes": {int(row["bytes"])}, "fp": "{row["fp"]}", "placed": "{row["placed"]}", '
            f'"rel": {json_str(row["rel"])}, "sha256": "{row["sha256"]}"}}\n'
        )
        if len(self.pending) >= CHECKPOINT_FILES or time.monotonic() - self.last >= CHECKPOINT_S:
            self.checkpoint()

    def checkpoint(self) -> None:
        # Rows only name files already renamed into place: a killed process loses at most the unflushed rows,
        # whose files the rerun simply writes again.
        if self.pending:
            self.handle.write("".join(self.pending))
            self.pending = []
        self.handle.flush()
        self.last = time.monotonic()
        if self.on_checkpoint is not None:
            self.on_checkpoint()

    def close(self) -> None:
        self.checkpoint()
        self.handle.close()


def _leave_ctrl_c_to_the_parent() -> None:
    """A worker ignores SIGINT (Ctrl-C reaches the whole process group): it finishes the job it has, and the
    parent, which does get the KeyboardInterrupt, cancels the rest and journals what finished."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


# What Workers hands back: each file now at its final path, with its fingerprint and how it was written.
Finished = list[tuple[PlannedFile, str, Written]]


class Workers:
    """Conversions, and copies of files placed as they are, in worker processes once enough files are left to pay
    for starting them; the calling process meanwhile reads, hashes and records the next files.

    Copies go in batches of :data:`BATCH_FILES` (one copy is too little work to send alone; links are cheaper
    still, and the writer makes them itself). :meth:`collect` hands back the files of finished jobs, each at its
    final path. A job that fails loses the results of its batch (those files are rewritten by the rerun, never
    half-written at a final path).
    """

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self.pool: ProcessPoolExecutor | None = None
        # Each job's future -> what turns its result into finished files.
        self.pending: dict[Future, Callable[[Any], Finished]] = {}
        self.batch: list[tuple[PlannedFile, str, str]] = []  # (file, fingerprint, sha256) of the jobs below
        self.batch_jobs: list[tuple[str, str, int]] = []

    def wants_pool(self, left: int) -> bool:
        """Whether the next file should go to a worker, with ``left`` files (this one included) still to go."""
        return (self.pool is not None or bool(self.batch)
                or (self.workers > 1 and left >= POOL_MIN_FILES))

    def _submit(self, fn: Callable[..., Any], *args: Any, finish: Callable[[Any], Finished]) -> None:
        if self.pool is None:
            import multiprocessing

            # spawn: a forked child could inherit a lock held by another thread (the CLI's progress display).
            self.pool = ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("spawn"),
                                            initializer=_leave_ctrl_c_to_the_parent)
        self.pending[self.pool.submit(fn, *args)] = finish

    def _collect_if_full(self) -> Finished:
        # A bounded queue: memory stays flat, and an error surfaces within a few jobs of where it happened.
        return self.collect(block=len(self.pending) >= 4 * self.workers)

    def convert(self, pf: PlannedFile, out: Path, fp: str) -> Finished:
        """Convert ``pf`` in a worker; returns the files finished meanwhile."""
        size = pf.size or image_target(pf.src, None)
        self._submit(_convert_job, str(pf.src), f"{out}/{pf.rel}", pf.role, tuple(size), pf.mode,
                     finish=lambda written: [(pf, fp, written)])
        return self._collect_if_full()

    def copy(self, pf: PlannedFile, out: Path, fp: str, size: int, sha256: str) -> Finished:
        """Copy ``pf``'s source as it is in a worker, with the next files (``size`` bytes, ``sha256``); returns the
        files finished meanwhile."""
        self.batch.append((pf, fp, sha256))
        self.batch_jobs.append((str(pf.src), f"{out}/{pf.rel}", size))
        if len(self.batch) < BATCH_FILES:
            return []
        self._flush()
        return self._collect_if_full()

    def _flush(self) -> None:
        if not self.batch:
            return
        items, jobs = self.batch, self.batch_jobs
        self.batch, self.batch_jobs = [], []

        def finish(copied: list[int]) -> Finished:
            return [(pf, fp, Written("copy", nbytes, sha256))
                    for (pf, fp, sha256), nbytes in zip(items, copied, strict=True)]

        self._submit(_copy_batch, jobs, finish=finish)

    def collect(self, *, block: bool = False, everything: bool = False) -> Finished:
        """The files of the jobs finished by now (waiting for one with ``block``; for all, the last batch
        included, with ``everything``).

        A failed job's error is raised with nothing popped, so that :meth:`abort` still finds the jobs that did
        finish (and their files get journaled).
        """
        if everything:
            self._flush()
        if not self.pending:
            return []
        if everything:
            done = wait(list(self.pending)).done
        elif block:
            done = wait(list(self.pending), return_when=FIRST_COMPLETED).done
        else:
            done = {job for job in self.pending if job.done()}
        for job in done:
            if job.exception() is not None:
                raise job.exception()
        finished: Finished = []
        for job in done:
            finished += self.pending.pop(job)(job.result())
        return finished

    def abort(self) -> Finished:
        """Stop: cancel what has not started, keep what finished (their files are complete). Files of the
        batch not yet sent were never placed."""
        self.batch, self.batch_jobs = [], []
        if self.pool is None:
            return []
        self.pool.shutdown(wait=True, cancel_futures=True)
        finished: Finished = []
        for job, finish in self.pending.items():
            if job.done() and not job.cancelled() and job.exception() is None:
                finished += finish(job.result())
        self.pending.clear()
        return finished

    def close(self) -> None:
        """Stop the worker processes (after :meth:`collect` with ``everything``: nothing is left to wait for)."""
        if self.pool is not None:
            self.pool.shutdown(wait=True)


def worker_count(config: ExportConfig) -> int:
    if config.workers:
        return config.workers
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
