"""Recognising an export that is already up to date before anything is planned, from ``stat`` calls alone.

After every complete export, :func:`remember` records a *watch list* outside the exported tree (beside the
source cache, :func:`anogen.export.probe.cache_file`): every file and folder the export's result depends on —
the sources, the synth folders' ``run.json``, manifests, shards and adapter records, the folders that were listed
to find them, the whole real data tree — and every file and folder the export wrote, with one digest of their
(size, mtime, inode). :func:`check` stats the same paths again; when the digest and the run's key (config, inputs
as given, working directory, anogen version) are unchanged, re-planning would find the same plan, the same sources
and the same files on disk, so there is nothing to do and no manifest is parsed, no source read.

Anything the list cannot vouch for makes the run take the planning way (which still skips unchanged files):
a changed or missing path, a new file in a watched folder (its mtime changes), a symlinked folder in the data
tree, or an input modified within :data:`RACY_S` of the run (its next change could keep size and mtime, git's
"racy" entries). Losing the file costs one planned run, nothing else.

No torch here.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from anogen import __version__
from anogen.export.config import ExportConfig
from anogen.export.planning import RENDER_VERSION, ExportPlan
from anogen.export.probe import cache_file
from anogen.io import write_bytes_replace
from anogen.records import SynthFolder
from anogen.records.manifest import MANIFEST, shard_paths
from anogen.records.run import RUN_JSON

STATE_SCHEMA = 1
# An input younger than this when the export began could change again within the file system's timestamp
# granularity without changing size or mtime: such a run records no state (the same rule as the source cache).
RACY_S = 2.0
_DIR_FLAGS = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_CLOEXEC", 0)
ADAPTER_JSON = "adapter.json"


def state_file(out: Path) -> Path:
    """Where the watch list of export folder ``out`` lives: beside its source cache, outside the export."""
    cache = cache_file(out)
    return cache.with_name(cache.stem + ".state.json")


def run_key(synth: Sequence[str | Path], config: ExportConfig) -> str:
    """What, besides the watched files, decides an export: its settings, its inputs as given, the working
    directory (relative paths in config and run.json are read from it) and the code that writes it."""
    spec = {
        "schema": STATE_SCHEMA,
        "anogen": __version__,
        "render": RENDER_VERSION,
        "config": {k: v for k, v in config.to_dict().items() if k not in ("force", "workers")},
        "out": str(Path(config.out).resolve()),
        "synth": [str(Path(p).resolve()) for p in synth],
        "cwd": os.getcwd(),
    }
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()


@dataclass
class Watched:
    """Paths grouped by folder: ``groups`` is ``[(folder, [names])]`` in a fixed order; ``inputs`` says, per
    group, whether it is an input (checked against the racy window) or something the export wrote."""

    groups: list[tuple[str, list[str]]]
    inputs: list[bool]


def _grouped(paths: Iterable[str], is_input: bool, into: dict[tuple[bool, str], set[str]]) -> None:
    for path in paths:
        parent, name = os.path.split(path)
        if name:
            into.setdefault((is_input, parent), set()).add(name)


def _watched(inputs: Iterable[str], outputs: Iterable[str]) -> Watched:
    groups: dict[tuple[bool, str], set[str]] = {}
    _grouped(inputs, True, groups)
    _grouped(outputs, False, groups)
    keys = sorted(groups)
    return Watched([(parent, sorted(groups[(is_input, parent)])) for is_input, parent in keys],
                   [is_input for is_input, _ in keys])


def _signature(watched: Watched) -> tuple[str, int]:
    """The digest of every watched path's (size, mtime, inode) ('-' for a missing one), and the newest input mtime.

    Each folder is opened once and its entries are stat'ed relative to it: the kernel then walks one path
    component per file, not the whole path.
    """
    digest = hashlib.sha256()
    newest = 0
    for (parent, names), is_input in zip(watched.groups, watched.inputs, strict=True):
        try:
            fd = os.open(parent, _DIR_FLAGS)
        except OSError:
            digest.update(b"!%d\n" % len(names))
            continue
        parts = []
        try:
            for name in names:
                try:
                    st = os.stat(name, dir_fd=fd)
                except OSError:
                    parts.append(b"-")
                    continue
                parts.append(b"%d %d %d" % (st.st_size, st.st_mtime_ns, st.st_ino))
                if is_input and st.st_mtime_ns > newest:
                    newest = st.st_mtime_ns
        finally:
            os.close(fd)
        digest.update(parent.encode("utf-8", "surrogateescape") + b"\n" + b"\n".join(parts) + b"\n")
    return digest.hexdigest(), newest


def check(out: Path, key: str) -> dict[str, Any] | None:
    """The recorded result of the last export into ``out`` when nothing it depends on changed since, else None."""
    try:
        doc = json.loads(state_file(out).read_bytes())
        if doc.get("schema_version") != STATE_SCHEMA or doc.get("key") != key:
            return None
        watched = Watched([(str(g[0]), list(g[1])) for g in doc["groups"]], [bool(g[2]) for g in doc["groups"]])
        result = dict(doc["result"])
    except (OSError, ValueError, TypeError, KeyError, IndexError, AttributeError):
        return None
    signature, _ = _signature(watched)
    return result if signature == doc.get("signature") else None


def forget(out: Path) -> None:
    """Drop the watch list of ``out`` (the next run plans)."""
    with contextlib.suppress(OSError):
        state_file(out).unlink()


def remember(out: Path, key: str, inputs: Iterable[str] | None, outputs: Iterable[str], result: dict[str, Any],
             started_ns: int) -> bool:
    """Record the watch list of the export just completed in ``out``; False (and nothing recorded) when an input
    is too young to be trusted or the inputs cannot be listed. Best effort: a read-only cache only costs time."""
    if inputs is None:
        forget(out)
        return False
    watched = _watched(inputs, outputs)
    signature, newest = _signature(watched)
    if newest > started_ns - int(RACY_S * 1e9):
        forget(out)
        return False
    doc = {"schema_version": STATE_SCHEMA, "key": key, "signature": signature, "result": result,
           "groups": [[parent, names, is_input] for (parent, names), is_input in
                      zip(watched.groups, watched.inputs, strict=True)]}
    path = state_file(out)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_bytes_replace(path, json.dumps(doc, separators=(",", ":")).encode())
    except OSError:
        return False
    return True


# ------------------------------------------------------------------------------------------ what is watched


def _dirs_below(root: Path, depth: int) -> list[str]:
    """``root`` and the folders below it down to ``depth`` levels (what finding synth folders lists)."""
    found, level = [str(root)], [str(root)]
    for _ in range(depth):
        below = []
        for folder in level:
            with contextlib.suppress(OSError), os.scandir(folder) as entries:
                below += [e.path for e in entries if e.is_dir()]
        found += below
        level = below
    return found


def _tree(root: Path) -> list[str] | None:
    """Every folder and file under ``root`` (the real data: its readers list folders and read files there);
    None when a symlinked folder would hide changes from the folders' mtimes."""
    found = [str(root)]
    for folder, dirs, files in os.walk(root):
        for name in dirs:
            path = os.path.join(folder, name)
            if os.path.islink(path):
                return None
            found.append(path)
        found += [os.path.join(folder, name) for name in files]
    return found


def watched_inputs(synth: Sequence[str | Path], sets: Sequence[SynthFolder], config: ExportConfig,
                   plan: ExportPlan) -> list[str] | None:
    """Every path whose change could change what ``export(synth, config)`` plans or writes; None: not listable."""
    paths: set[str] = set()
    for raw in synth:
        # find_synth_folders globs run.json one and two levels down: a new folder there changes these mtimes.
        paths.update(_dirs_below(Path(raw).resolve(), 2))
    for s in sets:
        folder = s.folder
        paths.update((str(folder), str(folder / RUN_JSON), str(folder / MANIFEST)))
        paths.update(str(p) for p in shard_paths(folder))
        if s.run.adapter.path:
            # The adapter record (the few-shot split) is looked up from the working directory, then the folder;
            # both candidates are watched, present or not.
            link = Path(s.run.adapter.path)
            for candidate in {link.resolve(), (folder / link).resolve()}:
                paths.update((str(candidate), str(candidate / ADAPTER_JSON)))
        for sample in s.samples:
            # Listed, not stat'ed one by one: a sample's part image must exist, its content is not used.
            paths.update((os.path.dirname(sample.image), os.path.dirname(sample.part), os.path.dirname(sample.mask)))
    if config.data is not None:
        tree = _tree(Path(config.data).resolve())
        if tree is None:
            return None
        paths.update(tree)
    paths.update(str(pf.src) for pf in plan.files)
    paths.update(str(p) for p in plan.depends)
    return sorted(paths)


def written_paths(out: Path, rels: Iterable[str]) -> list[str]:
    """The files the export wrote under ``out`` and every folder between them and ``out`` (a stray file added
    there changes a folder's mtime: the planned run would delete it)."""
    root = str(out)
    paths: set[str] = set()
    for rel in rels:
        paths.add(f"{root}/{rel}")
        parent = os.path.dirname(rel)
        while parent and f"{root}/{parent}" not in paths:
            paths.add(f"{root}/{parent}")
            parent = os.path.dirname(parent)
    return sorted(paths)
