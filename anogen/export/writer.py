"""Writing an export plan into its folder: fast, resumable, and recognisably one export of one format.

Each source is read once: its bytes are hashed (the fingerprint of every output file, and the ``sha256`` of the
export manifest), probed (:mod:`anogen.export.probe`) and, when they already are what the export would write,
written as they are (or hard/sym-linked); only the others are converted. When many files are left, worker
processes copy and convert them while this process reads, hashes and records the next. Every file goes
to a temp name and is renamed into place, so a killed export never leaves a half-written file at a final path.
A journal in the export root (``.anogen-export.journal.jsonl``, first line: the format) lists the files
written, appended every :data:`CHECKPOINT_FILES` files; a rerun keeps the journaled files whose sha256 still
matches and redoes the rest.

Durability: files are not synced one by one. Before ``export.json`` (the mark of a complete export) is written,
the file system is synced once, so after a power loss a folder with ``export.json`` holds every file complete. A
folder without it was interrupted: files of the last moments may be empty or torn, and a rerun rewrites them.

A re-export reads only the sources whose (size, mtime, inode) changed since the last run (the cache lives
outside the export, :class:`anogen.export.probe.SourceCache`); an unchanged one is recognised from ``stat`` calls
and does nothing.

No torch here.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from anogen import __version__
from anogen.errors import AnogenError, InputError
from anogen.export.config import ExportConfig
from anogen.export.items import Provenance
from anogen.export.notice import NOTICE_FILE, dataset_licence, notice_text
from anogen.export.placing import (
    JOURNAL,
    Journal,
    Sources,
    Workers,
    Writeback,
    Written,
    worker_count,
    write_planned,
)
from anogen.export.planning import ExportPlan, GeneratedFile, PlannedFile, json_str
from anogen.export.probe import SourceCache, cache_file, linkable
from anogen.io import (
    SCHEMA_VERSION,
    fsync_dir,
    sha256_file,
    sync_filesystem,
    write_bytes_replace,
    write_json_atomic,
)
from anogen.progress import ProgressCallback, report
from anogen.records import SynthFolder

logger = logging.getLogger(__name__)

# export.json is written last: its presence marks a complete export. The manifest maps every file to its source.
EXPORT_JSON = "export.json"
EXPORT_MANIFEST = "export_manifest.jsonl"
_PROGRESS_EVERY = 256
# One encoder for the manifest's unusual values: json.dumps builds a new one per call.
_ROW_ENCODER = json.JSONEncoder(sort_keys=True)


@dataclass
class ExportResult:
    """What :func:`run_plan` did."""

    out: Path
    format: str
    status: Literal["written", "up_to_date", "resumed"]
    files: int
    written: int
    reused: int
    removed: int
    counts: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["out"] = str(self.out)
        return data


def dir_state(out: Path) -> Literal["missing", "empty", "ours", "partial", "foreign"]:
    """Whether ``out`` is free, an export of ours (complete or interrupted), or someone else's folder."""
    if not out.exists():
        return "missing"
    if not out.is_dir():
        return "foreign"
    if (out / EXPORT_JSON).is_file():
        return "ours"
    if (out / JOURNAL).is_file():
        return "partial"
    return "empty" if not any(out.iterdir()) else "foreign"


def recorded_format(out: Path, state: str) -> str | None:
    """The format of the export in ``out`` (from export.json, or the journal of an interrupted one); None: unknown."""
    with contextlib.suppress(OSError, ValueError, AttributeError):
        if state == "ours":
            return str(json.loads((out / EXPORT_JSON).read_text(encoding="utf-8"))["format"])
        if state == "partial":
            with open(out / JOURNAL, encoding="utf-8") as handle:
                first = json.loads(handle.readline())
            return str(first["format"]) if "rel" not in first else None
    return None


def _refuse_other_format(out: Path, state: str, fmt: str) -> None:
    """One export tree per folder: a second format beside the first would leave two layouts mixed."""
    found = recorded_format(out, state)
    if found is None or found == fmt:
        return
    what = "an interrupted export" if state == "partial" else "an export"
    raise InputError(
        f"{out} holds {what} of format {found}; --format {fmt} would mix two layouts in one folder",
        hint=f"export --format {fmt} into another --out, or update this one with --format {found} "
        f"(delete {out} first to replace it; --force does not lift this)",
    )


def _rows_by(path: Path, key: str) -> dict[str, dict[str, Any]]:
    """The JSON-lines rows of ``path`` that name ``key``, by that value (a torn or odd line is skipped: its
    file is simply redone)."""
    rows: dict[str, dict[str, Any]] = {}
    if not path.is_file():
        return rows
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            with contextlib.suppress(json.JSONDecodeError):
                row = json.loads(line)
                if isinstance(row, dict) and key in row:
                    rows[row[key]] = row
    return rows


def _still_there(out: Path, row: dict[str, Any], completed_ns: int | None = None) -> bool:
    """Whether the file of ``row`` still has its recorded size and, when the export was completed at
    ``completed_ns`` (export.json's mtime), was not modified after that (an edit that kept the size)."""
    path = out / row["rel" if "rel" in row else "path"]
    try:
        st = path.stat()
    except OSError:
        return False
    return st.st_size == row.get("bytes") and (completed_ns is None or st.st_mtime_ns <= completed_ns)


# ------------------------------------------------------------------------------------------------ the export


def _config_record(config: ExportConfig, *drop: str) -> dict[str, Any]:
    # ``force`` and ``workers`` say how this run was invoked, not what it made: a forced or parallel rebuild of the
    # same inputs is byte-identical.
    return {k: v for k, v in config.to_dict().items() if k not in ("force", "workers", *drop)}


def _export_digest(plan: ExportPlan, config: ExportConfig, out: Path, fingerprints: dict[str, str],
                   sources: Sources) -> str:
    spec = {
        "format": plan.format,
        "out": str(out),
        "config": _config_record(config, "out"),
        "files": fingerprints,
        "generated": sorted(g.rel for g in plan.generated),
        "depends": sorted(sources.get(str(path), False)[0].sha256 for path in plan.depends),
    }
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()


def check_destination(config: ExportConfig, inputs: Sequence[SynthFolder], fmt: str) -> tuple[Path, str]:
    """Whether an export of format ``fmt`` may go into ``config.out``; returns the resolved folder and its state.

    Raises:
        InputError: ``out`` overlaps an input, is a file, a non-empty folder that is not an anogen export (without
            ``force``), or an export of another format.
    """
    out = Path(config.out).resolve()
    _refuse_overlap(out, config, inputs)
    state = dir_state(out)
    if state == "foreign" and out.exists() and not out.is_dir():
        raise InputError(f"{out} exists and is not a folder")
    if state == "foreign" and not config.force:
        raise InputError(
            f"{out} is not empty and holds no anogen export ({EXPORT_JSON})",
            hint="choose an empty or new folder, or pass --force to write into it anyway",
        )
    _refuse_other_format(out, state, fmt)
    return out, state


def run_plan(
    plan: ExportPlan,
    config: ExportConfig,
    *,
    inputs: Sequence[SynthFolder],
    progress: ProgressCallback | None = None,
) -> ExportResult:
    """Write ``plan`` into ``config.out``: idempotent, atomic per file, resumable after an interruption.

    Raises:
        InputError: ``out`` is a file, a non-empty folder that is not an anogen export (without ``force``), or an
            export of another format.
    """
    out, state = check_destination(config, inputs, plan.format)
    rels = [pf.rel for pf in plan.files] + [g.rel for g in plan.generated]
    if len(set(rels)) != len(rels):
        raise AnogenError("internal error: two export files share a path")
    root = str(out)
    for rel in rels:
        # Defence in depth: every name was sanitised, but no planned path may leave the export root.
        # normpath, not resolve: a symlinked export file legitimately points outside, its path does not.
        target = os.path.normpath(f"{root}/{rel}")
        if not target.startswith(root + os.sep) or target == root:
            raise InputError(f"refusing to write outside {out}: {rel}")
    out.mkdir(parents=True, exist_ok=True)

    cache = SourceCache(cache_file(out))
    sources = Sources(cache)
    total = len(plan.files)
    fingerprints: dict[str, str] = {}
    digest = None
    previous = _rows_by(out / EXPORT_MANIFEST, "path") if state in ("ours", "partial") else {}
    completed_ns = None
    if state == "ours":
        # Files of the last complete export modified after it (export.json's mtime) are not its files any more.
        with contextlib.suppress(OSError):
            completed_ns = os.stat(out / EXPORT_JSON).st_mtime_ns
    if state == "ours" and not config.force:
        # The up-to-date test needs every fingerprint before anything is written; sources are read (hashed) here
        # only when the cache does not know them.
        for index, pf in enumerate(plan.files):
            facts, _ = sources.get(str(pf.src), pf.role == "mask")
            fingerprints[pf.rel] = pf.fingerprint(facts.sha256, config.link)
            if (index + 1) % _PROGRESS_EVERY == 0 or index + 1 == total:
                report(progress, "hashing sources", index + 1, total)
        digest = _export_digest(plan, config, out, fingerprints, sources)
        with contextlib.suppress(OSError, ValueError):
            record = json.loads((out / EXPORT_JSON).read_text(encoding="utf-8"))
            if record.get("digest") == digest and all(_still_there(out, row, completed_ns)
                                                      for row in previous.values()):
                logger.info("%s is up to date", out)
                cache.save(keep=set(sources.stats))
                return ExportResult(out, plan.format, "up_to_date", len(previous), 0, len(previous), 0, plan.summary)

    journal_done = {} if config.force else _rows_by(out / JOURNAL, "rel")
    if state == "partial":
        # After a power loss a journaled file may be empty or torn: keep only those whose bytes still match.
        journal_done = {rel: row for rel, row in journal_done.items() if _intact(out, row)}
    if not config.force:
        # Files of a previous complete export count as done when their fingerprint still matches.
        for rel, row in previous.items():
            if "fingerprint" in row and rel not in journal_done:
                journal_done[rel] = {"rel": rel, "fp": row["fingerprint"], "bytes": row.get("bytes"),
                                     "sha256": row.get("sha256"), "placed": row.get("placed")}
    resumed = state == "partial" and bool(journal_done)
    written = reused = 0
    rows: dict[str, dict[str, Any]] = {}
    writeback = Writeback(out)
    journal = Journal(out, plan.format, fresh=config.force, on_checkpoint=writeback.start)
    workers = Workers(worker_count(config))
    made_dirs: set[str] = set()

    def record_written(pf: PlannedFile, fp: str, result: Written) -> None:
        nonlocal written
        row = {"rel": pf.rel, "fp": fp, "bytes": result.bytes, "sha256": result.sha256, "placed": result.placed}
        journal.add(row)
        rows[pf.rel] = row
        written += 1

    try:
        # The journal exists before export.json goes, so the folder is always recognisably ours.
        with contextlib.suppress(FileNotFoundError):
            (out / EXPORT_JSON).unlink()
        for index, pf in enumerate(plan.files):
            src = str(pf.src)
            facts, data = sources.get(src, pf.role == "mask")
            fp = fingerprints.get(pf.rel) or pf.fingerprint(facts.sha256, config.link)
            fingerprints[pf.rel] = fp
            done = journal_done.get(pf.rel)
            if done is not None and done.get("fp") == fp and _still_there(out, {"rel": pf.rel, **done},
                                                                           completed_ns):
                rows[pf.rel] = done
                reused += 1
            else:
                parent = os.path.dirname(f"{root}/{pf.rel}")
                if parent not in made_dirs:
                    os.makedirs(parent, exist_ok=True)
                    made_dirs.add(parent)
                size = sources.stats[src].st_size
                as_is = linkable(facts, pf.role, pf.size, pf.mode)
                # A link costs less than sending it to a worker (measured: bench/export.py): links stay here.
                if not workers.wants_pool(total - index) or (as_is and config.link != "copy"):
                    record_written(pf, fp, write_planned(pf, out, config.link, data=data, facts=facts, size=size))
                elif as_is:
                    for item in workers.copy(pf, out, fp, size, facts.sha256):
                        record_written(*item)
                else:
                    for item in workers.convert(pf, out, fp):
                        record_written(*item)
            if (index + 1) % _PROGRESS_EVERY == 0 or index + 1 == total:
                for item in workers.collect():
                    record_written(*item)
                report(progress, f"export {plan.format}", index + 1, total)
        for item in workers.collect(everything=True):
            record_written(*item)
    except BaseException:
        for item in workers.abort():
            record_written(*item)
        journal.close()
        raise
    workers.close()

    generated = [*plan.generated, GeneratedFile(NOTICE_FILE, lambda: notice_text(plan.categories, plan.format).encode(),
                                                role="notice")]
    gen_rows = []
    for gen in generated:
        content = gen.make()
        write_bytes_replace(out / gen.rel, content)
        gen_rows.append((gen, len(content), hashlib.sha256(content).hexdigest()))
    # Into a folder that was missing or empty, this run wrote every file there is (temp files are renamed or
    # removed as they go): no walk of the tree is needed to find strays.
    removed = _remove_strays(out, plan, set(rels)) if state not in ("missing", "empty") else 0
    if digest is None:
        digest = _export_digest(plan, config, out, fingerprints, sources)

    manifest_lines = []
    for pf in sorted(plan.files, key=lambda p: p.rel):
        jr = rows[pf.rel]
        facts = sources.facts[str(pf.src)]
        manifest_lines.append(manifest_line(pf, jr, facts.sha256, fingerprints[pf.rel]))
    for gen, size, sha in sorted(gen_rows, key=lambda g: g[0].rel):
        manifest_lines.append(json.dumps({"schema_version": SCHEMA_VERSION, "path": gen.rel, "role": gen.role,
                                          "source": {"kind": "generated"}, "bytes": size, "sha256": sha},
                                         sort_keys=True))
    write_bytes_replace(out / EXPORT_MANIFEST, ("\n".join(manifest_lines) + "\n").encode())
    record = {
        "schema_version": SCHEMA_VERSION,
        "anogen_version": __version__,
        "format": plan.format,
        "digest": digest,
        "config": _config_record(config),
        "notice": NOTICE_FILE,
        "manifest": EXPORT_MANIFEST,
        "files": len(manifest_lines),
        "counts": plan.summary,
        "categories": [
            {
                "name": c.name,
                "source_name": c.source_name,
                "dataset_format": c.dataset_format,
                "data_root": c.data_root,
                "image_size": list(c.target_size) if c.target_size else None,
                "grayscale": c.grayscale,
                "licence": dataset_licence(c.dataset_format)[1],
            }
            for c in plan.categories
        ],
        "inputs": [
            {
                "synth_dir": str(s.folder),
                "category": s.category,
                "defect": s.defect,
                "adapter_sha256": s.run.adapter.sha256,
                "seed": s.run.seed,
                "accepted_exported": len(s.samples),
            }
            for s in inputs
        ],
    }
    journal.close()
    # One sync for the whole export instead of one per file (the checkpoints' background writeback has done most of
    # its work by now); export.json, last, marks it complete and durable.
    writeback.wait()
    sync_filesystem(out)
    write_json_atomic(out / EXPORT_JSON, record)
    with contextlib.suppress(FileNotFoundError):
        (out / JOURNAL).unlink()
    fsync_dir(out)
    cache.save(keep=set(sources.stats))
    status: Literal["written", "resumed"] = "resumed" if resumed else "written"
    return ExportResult(out, plan.format, status, len(manifest_lines), written, reused, removed, plan.summary)


def _json_value(value: Any) -> str:
    """``value`` as ``json.dumps`` writes it: strings, ints and None spelled out, anything else by the encoder."""
    kind = type(value)
    if kind is str:
        return json_str(value)
    if kind is int:
        return int.__repr__(value)
    return "null" if value is None else _ROW_ENCODER.encode(value)


def _source_json(prov: Provenance, sha256: str) -> str:
    """``json.dumps({**prov.to_dict(), "sha256": sha256}, sort_keys=True)``, spelled out (keys in sorted order;
    ``category``, ``kind``, ``path`` and ``sha256`` always, the others when set, as ``to_dict`` leaves them)."""
    synth_dir = None if prov.synth_dir is None else str(prov.synth_dir)
    fields = (("adapter_sha256", prov.adapter_sha256, False), ("category", prov.category, True),
              ("defect", prov.defect, False), ("id", prov.id, False), ("kind", prov.kind, True),
              ("name", prov.name, False), ("path", str(prov.path), True), ("seed", prov.seed, False),
              ("sha256", sha256, True), ("stem", prov.stem, False), ("synth_dir", synth_dir, False))
    return "{" + ", ".join(f'"{key}": {_json_value(value)}' for key, value, always in fields
                           if always or value is not None) + "}"


def manifest_line(pf: PlannedFile, row: dict[str, Any], src_sha256: str, fingerprint: str) -> str:
    """The export manifest's line for ``pf`` (``row``: what placing it recorded): the bytes of ``json.dumps`` of
    the row with ``sort_keys=True``, spelled out because an export writes one per file and the generic encoder
    costs several times more (tests compare the two)."""
    return (
        f'{{"bytes": {_json_value(row["bytes"])}, "category": {_json_value(pf.category)}, '
        f'"defect": {_json_value(pf.defect)}, "fingerprint": {_json_value(fingerprint)}, '
        f'"label": {_json_value(pf.label)}, "pair": {_json_value(pf.pair)}, "path": {_json_value(pf.rel)}, '
        f'"placed": {_json_value(row.get("placed"))}, "role": {_json_value(pf.role)}, '
        f'"schema_version": {SCHEMA_VERSION}, "sha256": {_json_value(row["sha256"])}, '
        f'"source": {_source_json(pf.provenance, src_sha256)}, "split": {_json_value(pf.split)}}}'
    )


def _intact(out: Path, row: dict[str, Any]) -> bool:
    try:
        return sha256_file(out / row["rel"]) == row.get("sha256")
    except (OSError, KeyError, TypeError):
        return False


def _refuse_overlap(out: Path, config: ExportConfig, inputs: Sequence[SynthFolder]) -> None:
    """Never export into (or around) the data being read: cleaning the export's folders would delete it."""
    sources = [Path(config.data).resolve()] if config.data is not None else []
    sources += [s.folder for s in inputs]
    for source in sources:
        if out == source or out in source.parents or source in out.parents:
            raise InputError(
                f"--out {out} overlaps an input ({source})",
                hint="export into a separate folder; --force does not lift this",
            )


def _remove_strays(out: Path, plan: ExportPlan, keep: set[str]) -> int:
    """Delete files under the export's own folders that the plan does not hold (older exports, temp files)."""
    removed = 0
    root = str(out)
    for root_rel in plan.roots:
        top = f"{root}/{root_rel}"
        if not os.path.isdir(top) or os.path.islink(top):
            continue
        for folder, dirs, files in os.walk(top, topdown=False):
            rel_folder = os.path.relpath(folder, root).replace(os.sep, "/")
            for name in files + [d for d in dirs if os.path.islink(os.path.join(folder, d))]:
                if f"{rel_folder}/{name}" not in keep:
                    os.unlink(os.path.join(folder, name))
                    removed += 1
            with contextlib.suppress(OSError):
                if not os.listdir(folder):
                    os.rmdir(folder)
    return removed
