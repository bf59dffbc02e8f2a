"""A synth defect folder read back: :class:`SynthFolder` (its ``run.json``, every manifest row, the accepted
samples with their paths, the few-shot split) and :func:`read_synth_folder`, the one reader export, report, eval,
``anogen mask`` and ``anogen verify`` share. No torch."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from anogen.errors import DataError, InputError
from anogen.records.adapter import ADAPTER_JSON, RecordedSplit, read_adapter_record
from anogen.records.manifest import MANIFEST, find_synth_dirs, read_all_rows, result_rows
from anogen.records.run import RunRecord, read_run_record


@dataclass(frozen=True)
class SynthSample:
    """One accepted synthetic sample, with absolute paths."""

    category: str
    defect: str
    id: int
    name: str
    seed: int | None
    adapter_sha256: str | None
    image: Path
    part: Path
    mask: Path
    mask_area: float | None
    synth_dir: Path


@dataclass(frozen=True)
class SynthFolder:
    """One synth defect folder (resolved): its ``run.json``, every manifest row in id order (shards included)
    and the accepted samples (the first ``count`` accepted rows).

    ``split`` is the few-shot split of the adapter that made it: run.json's ``split``, else the one in the
    adapter's ``adapter.json`` (older outputs only point at the adapter); ``None`` when neither records one.
    """

    folder: Path
    run: RunRecord
    category: str
    defect: str
    rows: list[dict[str, Any]]
    samples: list[SynthSample] = field(default_factory=list)
    split: RecordedSplit | None = None

    @property
    def held_out_stems(self) -> list[str] | None:
        """The real held-out stems the adapter never saw, or ``None`` when no held-out list is recorded."""
        if self.split is None or self.split.held_out is None:
            return None
        train = set(self.split.train or ())
        return [s for s in self.split.held_out if s not in train]


def find_synth_folders(paths: Sequence[str | Path]) -> list[Path]:
    """Every synth defect folder under the given paths (a synth root, a category folder or a defect folder),
    resolved, each once.

    Raises:
        InputError: a path does not exist or holds no synth output.
    """
    found: list[Path] = []
    for raw in paths:
        for candidate in find_synth_dirs(Path(raw)):
            resolved = candidate.resolve()
            if resolved not in found:
                found.append(resolved)
    return found


def read_synth_folder(folder: str | Path) -> SynthFolder:
    """Read one synth defect folder; ``samples`` are the first ``count`` accepted rows in id order.

    Raises:
        InputError: the manifest or run.json is unreadable, or an accepted sample's file is missing.
    """
    folder = Path(folder).resolve()
    run = read_run_record(folder)
    if run is None:
        raise DataError(f"{folder} has no run.json: not a synth output folder", path=folder)
    by_id = read_all_rows(folder)
    rows = [by_id[i] for i in sorted(by_id)]
    category = str(run.category or folder.parent.name)
    defect = str(run.defect or folder.name)
    samples: list[SynthSample] = []
    locate = _ManifestPaths(folder, folder / MANIFEST)
    for row in result_rows(rows, run.count):
        paths = {key: locate(row, key) for key in ("image", "part", "mask")}
        samples.append(
            SynthSample(
                category=category,
                defect=defect,
                id=int(row["id"]),
                name=str(row.get("name") or f"{int(row['id']):06d}"),
                seed=row.get("seed"),
                adapter_sha256=row.get("adapter_sha256") or run.adapter.sha256,
                image=paths["image"],
                part=paths["part"],
                mask=paths["mask"],
                mask_area=row.get("mask_area"),
                synth_dir=folder,
            )
        )
    split = run.split if run.split is not None else _adapter_split(folder, run)
    return SynthFolder(folder, run, category, defect, rows, samples, split)


def _adapter_split(folder: Path, run: RunRecord) -> RecordedSplit | None:
    """The split in the ``adapter.json`` run.json points at (a folder or the file itself); ``None`` when it is not
    there or unreadable.

    ``synth`` records the adapter path as it was given, so a relative one is relative to the folder synth ran
    in: it is tried from the current directory first (eval's rule), then from the synth folder (export's rule).
    """
    if not run.adapter.path:
        return None
    record_path = Path(run.adapter.path)
    if not record_path.is_absolute():
        from_cwd = record_path.resolve()
        record_path = from_cwd if from_cwd.exists() else (folder / record_path).resolve()
    record_dir = record_path if record_path.is_dir() else record_path.parent
    if record_path.name != ADAPTER_JSON and not record_path.is_dir():
        return None
    with contextlib.suppress(InputError):
        return read_adapter_record(record_dir).split
    return None


class _ManifestPaths:
    """Resolve manifest paths inside a synth folder as ``Path.resolve`` would, without its cost for plain files.

    A regular file directly listed in a folder free of symlinks resolves to its normalised path (one directory
    listing per folder, not a system call per file); symlinks and anything unusual take the slow, exact way.
    """

    def __init__(self, folder: Path, manifest: Path) -> None:
        self.folder, self.manifest = folder, manifest
        self.prefix = str(folder) + os.sep
        self.listings: dict[str, set[str]] = {}

    def _regular_files(self, parent: str) -> set[str]:
        names = self.listings.get(parent)
        if names is None:
            names = set()
            if os.path.realpath(parent) == parent:
                with contextlib.suppress(OSError), os.scandir(parent) as entries:
                    names = {e.name for e in entries if e.is_file(follow_symlinks=False)}
            self.listings[parent] = names
        return names

    def __call__(self, row: dict[str, Any], key: str) -> Path:
        rel = row.get(key)
        if not isinstance(rel, str):
            raise DataError(f"{self.manifest}: row {row['id']} has no {key} path")
        joined = os.path.normpath(os.path.join(self.prefix, rel))
        parent, name = os.path.split(joined)
        if joined.startswith(self.prefix) and name in self._regular_files(parent):
            return Path(joined)
        target = (self.folder / rel).resolve()
        # A manifest path must stay inside its folder; anything else is a corrupt or hostile manifest.
        if self.folder not in target.parents:
            raise DataError(f"{self.manifest}: row {row['id']} points outside its folder: {rel}")
        if not target.is_file():
            raise DataError(f"{target} is missing (accepted sample {row['id']})", path=target)
        return target
