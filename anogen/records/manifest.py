"""Reading and writing a synth folder's ``manifest.jsonl`` (one row per attempt) and its shards; finding adapter and
synth folders. No torch here.

A synth defect folder ``OUT/<category>/<defect>/`` holds ``image/``, ``part/``, ``mask/`` (``NNNNNN.png`` named by
attempt id), ``run.json`` and ``manifest.jsonl``. While a run is going, rows are appended (and fsync'ed) to
``manifest.jsonl`` by a single process, or to ``manifest.rank<r>.jsonl`` by rank ``r`` of several; at the end the
rows are merged, sorted by id, into ``manifest.jsonl`` (rewritten atomically) and the shards removed.

A row is written only after its three PNGs exist, so a reader trusts rows, never bare files. A killed run can leave a
torn last line; :func:`read_rows` ignores it and ``repair=True`` truncates it away before appending again.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from anogen.errors import InputError
from anogen.io import SCHEMA_VERSION, write_text_atomic
from anogen.records.adapter import ADAPTER_JSON
from anogen.records.run import RUN_JSON

logger = logging.getLogger(__name__)

MANIFEST = "manifest.jsonl"
SHARD_GLOB = "manifest.rank*.jsonl"
SUBDIRS = ("image", "part", "mask")
# Left in a synth folder while `anogen mask` rewrites it: synth and verify refuse to touch the folder meanwhile.
REMASK_MARKER = ".remask-pending.json"
ID_WIDTH = 6


def shard_name(rank: int) -> str:
    """The manifest shard rank ``rank`` appends to when several processes share a run."""
    return f"manifest.rank{rank}.jsonl"


def sample_name(sample_id: int) -> str:
    """``12 -> "000012"``: fixed width, so sorted file names are in id order."""
    return f"{sample_id:0{ID_WIDTH}d}"


def make_row(
    sample_id: int,
    *,
    seed: int,
    category: str,
    defect: str,
    accepted: bool,
    reason: str | None,
    mask_area: float,
    adapter_sha256: str,
    **extra: Any,
) -> dict[str, Any]:
    """One manifest row (see docs/architecture.md "Synth output"); ``extra`` keys are added after the standard ones."""
    name = sample_name(sample_id)
    row: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "id": int(sample_id),
        "name": name,
        "seed": int(seed),
        "category": category,
        "defect": defect,
        "accepted": bool(accepted),
        "reason": reason,
        "mask_area": round(float(mask_area), 6),
        "image": f"image/{name}.png",
        "part": f"part/{name}.png",
        "mask": f"mask/{name}.png",
        "adapter_sha256": adapter_sha256,
    }
    row.update(extra)
    return row


def row_line(row: Mapping[str, Any]) -> str:
    return json.dumps(row, sort_keys=True, separators=(",", ":")) + "\n"


def append_row(path: str | Path, row: Mapping[str, Any]) -> None:
    """Append one row and fsync, so that a row on disk survives a kill right after this returns."""
    path = Path(path)
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(row_line(row))
        handle.flush()
        os.fsync(handle.fileno())


def read_rows(path: str | Path, *, repair: bool = False) -> list[dict[str, Any]]:
    """The rows of a manifest (or shard) file; a missing file is empty.

    Args:
        path (`str | Path`): the ``.jsonl`` file.
        repair (`bool`, defaults to False): truncate a torn last line (an append cut by a kill) off the file, so
            that the next append starts on a fresh line. Only the process that appends to the file may repair it.
    """
    path = Path(path)
    if not path.is_file():
        return []
    data = path.read_bytes()
    rows: list[dict[str, Any]] = []
    good_end = 0
    pos = 0
    for raw in data.splitlines(keepends=True):
        pos += len(raw)
        if not raw.endswith(b"\n"):
            break  # torn last line
        text = raw.strip()
        if not text:
            good_end = pos
            continue
        try:
            row = json.loads(text)
        except ValueError:
            if pos == len(data):
                break  # a torn line that happens to end in a newline byte
            raise InputError(f"{path}: line {len(rows) + 1} is not valid JSON", path=path) from None
        if not isinstance(row, dict) or "id" not in row:
            raise InputError(f"{path}: line {len(rows) + 1} is not a manifest row", path=path)
        rows.append(row)
        good_end = pos
    if good_end < len(data):
        logger.warning("%s: ignoring a torn last line (%d bytes)", path, len(data) - good_end)
        if repair:
            with open(path, "r+b") as handle:
                handle.truncate(good_end)
                handle.flush()
                os.fsync(handle.fileno())
    return rows


def shard_paths(folder: str | Path) -> list[Path]:
    return sorted(Path(folder).glob(SHARD_GLOB))


def read_all_rows(folder: str | Path) -> dict[int, dict[str, Any]]:
    """Every row of a defect folder, from ``manifest.jsonl`` and any shards, keyed by id (first copy wins)."""
    folder = Path(folder)
    rows: dict[int, dict[str, Any]] = {}
    for path in [folder / MANIFEST, *shard_paths(folder)]:
        for row in read_rows(path):
            rows.setdefault(int(row["id"]), row)
    return rows


def write_manifest(folder: str | Path, rows: Iterable[Mapping[str, Any]]) -> Path:
    """Rewrite ``manifest.jsonl`` atomically with ``rows`` sorted by id."""
    path = Path(folder) / MANIFEST
    ordered = sorted(rows, key=lambda r: int(r["id"]))
    write_text_atomic(path, "".join(row_line(r) for r in ordered))
    return path


def cutoff_id(rows: Mapping[int, Mapping[str, Any]], count: int) -> int | None:
    """The id of the ``count``-th accepted attempt once every id before it is done, else ``None``.

    Attempts past this id can never enter the result (the first ``count`` accepted in id order), whatever is
    still running, so a process may stop once its next id is larger.
    """
    accepted = 0
    i = 0
    if count <= 0:
        return -1
    while i in rows:
        if rows[i].get("accepted"):
            accepted += 1
            if accepted >= count:
                return i
        i += 1
    return None


def result_rows(rows: Mapping[int, Mapping[str, Any]] | Sequence[Mapping[str, Any]], count: int | None) -> list[Any]:
    """The result of ``--count N``: the first ``count`` accepted rows in id order (all accepted if ``None``)."""
    values = rows.values() if isinstance(rows, Mapping) else rows
    accepted = [r for r in sorted(values, key=lambda r: int(r["id"])) if r.get("accepted")]
    return accepted if count is None else accepted[:count]


@dataclass(frozen=True)
class Tally:
    """The counts of the result of ``--count N``, as the merged manifest will hold them.

    Attributes:
        accepted: accepted rows of the result (at most N).
        rejected: rejected rows by reason, among the attempts up to the N-th accepted one (every attempt while N
            is not reached): rejected attempts after the cut are deleted when the manifest is merged.
        attempts: those attempts.
    """

    accepted: int
    rejected: dict[str, int]
    attempts: int

    @property
    def rejected_total(self) -> int:
        return sum(self.rejected.values())


def tally(rows: Mapping[int, Mapping[str, Any]], count: int) -> Tally:
    """Count the result of ``--count count`` in ``rows`` (id -> row); progress and summaries both use this."""
    cut = cutoff_id(rows, count)
    kept = [r for i, r in rows.items() if cut is None or i <= cut]
    rejected: dict[str, int] = {}
    for r in kept:
        if not r.get("accepted"):
            reason = str(r.get("reason"))
            rejected[reason] = rejected.get(reason, 0) + 1
    return Tally(len(result_rows(rows, count)), dict(sorted(rejected.items())), len(kept))


def _find_below(root: Path, marker: str, what: str, hint: str) -> list[Path]:
    root = Path(root)
    if not root.exists():
        raise InputError(f"{root} does not exist", path=root)
    if (root / marker).is_file():
        return [root]
    found = sorted({p.parent for depth in ("*", "*/*") for p in root.glob(f"{depth}/{marker}")})
    if not found:
        raise InputError(f"no {what} under {root} (looked for {marker} up to two levels down)", hint=hint)
    return found


def find_adapter_dirs(runs: str | Path) -> list[Path]:
    """Adapter folders below ``runs``: a fit output root, a category folder or a defect folder."""
    return _find_below(Path(runs), ADAPTER_JSON, "fitted adapter", "run `anogen fit DATA --out RUNS` first")


def find_synth_dirs(root: str | Path) -> list[Path]:
    """Synth defect folders below ``root`` (an output root, a category folder or a defect folder)."""
    return _find_below(Path(root), RUN_JSON, "synth output", "run `anogen synth RUNS --out DIR` first")
