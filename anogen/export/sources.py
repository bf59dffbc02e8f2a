"""Reading synth output folders for an export: the accepted samples of each defect folder, and its split."""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from anogen.errors import DataError


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


@dataclass
class SynthSet:
    """One synth defect folder: its ``run.json``, every manifest row and the accepted samples."""

    folder: Path
    run: dict[str, Any]
    category: str
    defect: str
    rows: list[dict[str, Any]]
    samples: list[SynthSample] = field(default_factory=list)

    @property
    def data_info(self) -> dict[str, Any]:
        data = self.run.get("data")
        return data if isinstance(data, dict) else {}


def find_synth_folders(paths: Sequence[str | Path]) -> list[Path]:
    """Every synth defect folder under the given paths (a synth root, a category folder or a defect folder).

    Raises:
        InputError: a path does not exist or holds no synth output.
    """
    from anogen.manifest import find_synth_dirs

    found: list[Path] = []
    for raw in paths:
        for candidate in find_synth_dirs(Path(raw)):
            resolved = candidate.resolve()
            if resolved not in found:
                found.append(resolved)
    return found


def read_synth_set(folder: str | Path) -> SynthSet:
    """Read one synth defect folder; ``samples`` are the first ``count`` accepted rows in id order.

    Raises:
        InputError: the manifest or run.json is unreadable, or an accepted sample's file is missing.
    """
    from anogen.manifest import MANIFEST, read_all_rows, read_run_json, result_rows

    folder = Path(folder).resolve()
    run = read_run_json(folder)
    if run is None:
        raise DataError(f"{folder} has no run.json: not a synth output folder", path=folder)
    by_id = read_all_rows(folder)
    rows = [by_id[i] for i in sorted(by_id)]
    category = str(run.get("category") or folder.parent.name)
    defect = str(run.get("defect") or folder.name)
    count = run.get("count")
    adapter = run.get("adapter") if isinstance(run.get("adapter"), dict) else {}
    samples: list[SynthSample] = []
    locate = _ManifestPaths(folder, folder / MANIFEST)
    for row in result_rows(rows, count if isinstance(count, int) else None):
        paths = {key: locate(row, key) for key in ("image", "part", "mask")}
        samples.append(
            SynthSample(
                category=category,
                defect=defect,
                id=int(row["id"]),
                name=str(row.get("name") or f"{int(row['id']):06d}"),
                seed=row.get("seed"),
                adapter_sha256=row.get("adapter_sha256") or adapter.get("sha256"),
                image=paths["image"],
                part=paths["part"],
                mask=paths["mask"],
                mask_area=row.get("mask_area"),
                synth_dir=folder,
            )
        )
    return SynthSet(folder=folder, run=run, category=category, defect=defect, rows=rows, samples=samples)


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


def held_out_stems(synth: SynthSet) -> list[str] | None:
    """The real held-out stems the adapter never saw, from run.json ``split`` or the adapter's adapter.json."""
    split = synth.run.get("split")
    if not isinstance(split, dict):
        adapter = synth.run.get("adapter")
        adapter_path = adapter.get("path") if isinstance(adapter, dict) else None
        if adapter_path:
            record_path = Path(adapter_path)
            if not record_path.is_absolute():
                record_path = (synth.folder / record_path).resolve()
            record_file = record_path / "adapter.json" if record_path.is_dir() else record_path
            if record_file.name == "adapter.json" and record_file.is_file():
                with contextlib.suppress(OSError, json.JSONDecodeError):
                    split = json.loads(record_file.read_text(encoding="utf-8")).get("split")
    if not isinstance(split, dict) or not isinstance(split.get("held_out"), list):
        return None
    train = {str(s) for s in split.get("train") or []}
    return [str(s) for s in split["held_out"] if str(s) not in train]
