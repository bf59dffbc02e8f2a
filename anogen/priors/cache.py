"""What lets a rerun of ``build_prior`` skip work: the key of all its inputs, the ledger of the images an
interrupted run finished, the previous ``prior.json``, and the files it listed that this run no longer writes."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from pathlib import Path
from typing import Any

from anogen.data.model import Category
from anogen.priors.inputs import _Job
from anogen.priors.params import PRIOR_SCHEMA_VERSION
from anogen.priors.record import PriorImage

# The name the single-module priors.py logged under: log filters and formats keep seeing the same name.
logger = logging.getLogger("anogen.priors")

LEDGER = ".prior-progress.jsonl"


class _Ledger:
    """Append-only record of the images finished since the last ``prior.json``, one JSON line each.

    The image files themselves are written atomically before their line; a torn last line (a kill during the
    write) is ignored on reading, so the worst case is recomputing one image.
    """

    def __init__(self, path: Path, params_hash: str, kind: str) -> None:
        self.path = path
        self.params_hash = params_hash
        self.kind = kind

    def add(self, row: PriorImage) -> None:
        # Opened per line (cheap next to segmenting an image): nothing is left open if the run is interrupted.
        self.path.parent.mkdir(parents=True, exist_ok=True)
        line = {"params_hash": self.params_hash, "kind": self.kind, **dataclasses.asdict(row)}
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(line, sort_keys=True) + "\n")

    def close(self, remove: bool = False) -> None:
        if remove and self.path.exists():
            self.path.unlink()


def _read_ledger(path: Path, params_hash: str, kind: str) -> dict[tuple[str, str], dict[str, Any]]:
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    if not path.is_file():
        return rows
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue  # the torn last line of a killed run
        if isinstance(row, dict) and row.get("params_hash") == params_hash and row.get("kind") == kind:
            rows[(row["split"], row["stem"])] = row
    return rows


def _inputs_key(
    jobs: list[_Job],
    hashes: dict[Path, str],
    params_hash: str,
    kind: str,
    category: Category,
    stats_stems: dict[str, list[str]],
) -> str:
    digest = hashlib.sha256()
    digest.update(json.dumps(stats_stems, sort_keys=True).encode())
    digest.update(f"{PRIOR_SCHEMA_VERSION}|{params_hash}|{kind}|{category.name}|{category.dataset_format}\n".encode())
    for job in jobs:
        mask = hashes.get(job.mask.path, "") if job.mask is not None else ""
        digest.update(f"{job.role}|{job.split}|{job.stem}|{job.defect}|{hashes[job.info.path]}|{mask}\n".encode())
    return digest.hexdigest()


def _read_old(folder: Path) -> dict[str, Any] | None:
    path = folder / "prior.json"
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        logger.warning("ignoring unreadable %s; recomputing the prior", path)
        return None
    return data if isinstance(data, dict) and data.get("schema_version") == PRIOR_SCHEMA_VERSION else None


def _listed_outputs(record: dict[str, Any]) -> list[str]:
    paths = [record.get("shapes"), record.get("location"), record.get("preview")]
    for row in record.get("images", []):
        paths += [row.get("object"), row.get("background")]
    for info in record.get("defects", {}).values():
        paths += [info.get("location"), info.get("location_png")]
    return [p for p in paths if p]


def _outputs_exist(folder: Path, record: dict[str, Any]) -> bool:
    return all((folder / rel).is_file() for rel in _listed_outputs(record))


def _remove_stale(folder: Path, old: dict[str, Any], new: dict[str, Any]) -> None:
    """Delete files the previous run listed and this one does not (images removed from the source)."""
    keep = set(_listed_outputs(new))
    for rel in _listed_outputs(old):
        if rel not in keep and ".." not in Path(rel).parts:
            path = folder / rel
            if path.is_file():
                path.unlink()
