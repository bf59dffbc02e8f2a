"""What a source file of an export is, read from its bytes, and a cache of it kept outside the exported tree.

A file needs no conversion when it already is what the export would write: a PNG of the planned size and mode
(and, for a mask, holding only 0 and 255). :func:`probe` decides that from the bytes the writer has read anyway,
parsing the PNG header itself and un-filtering a greyscale mask with numpy; anything unusual (another colour type
or bit depth, interlacing, the Average/Paeth filters, a damaged chunk) goes to Pillow, which gives the same answer
the writer always gave.

:class:`SourceCache` remembers each source's sha256 and probe by (path, size, mtime, inode), so a re-export reads
only what changed. It lives in ``$ANOGEN_CACHE/export/`` (default ``~/.cache/anogen``), one file per export folder,
never in the export itself (trees stay reproducible); losing it only costs time.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import struct
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from anogen.io import write_bytes_replace

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# (bit depth, colour type) -> the mode Pillow gives; other combinations are left to Pillow.
_FAST_MODES = {(8, 0): "L", (8, 2): "RGB"}
CACHE_SCHEMA = 2
# Entries younger than this are not cached: a file rewritten within the clock's granularity could keep size and
# mtime (git's "racy" entries).
_RACY_S = 2.0


@dataclass(frozen=True)
class Probe:
    """A source's content facts: its sha256 and, when Pillow reads it as a PNG, its size and mode.

    ``binary`` is whether every pixel of an ``L`` image is 0 or 255 (None: not looked at, or not ``L``).
    """

    sha256: str
    png: tuple[int, int, str] | None
    binary: bool | None = None


def probe(data: bytes, *, need_binary: bool) -> Probe:
    """The facts of a file's bytes; ``need_binary`` also decides whether an ``L`` PNG holds only 0 and 255."""
    sha = hashlib.sha256(data).hexdigest()
    parsed = _parse_png(data)
    if parsed is None:
        return _pillow_probe(data, sha, need_binary)
    width, height, mode, interlaced, idat = parsed
    binary = None
    if need_binary and mode == "L":
        binary = None if interlaced else _binary_l8(idat, width, height)
        if binary is None:
            return _pillow_probe(data, sha, need_binary)
    return Probe(sha, (width, height, mode), binary)


def _parse_png(data: bytes) -> tuple[int, int, str, bool, list[bytes]] | None:
    """(width, height, mode, interlaced, IDAT payloads) of an 8-bit grey or RGB PNG with sound chunks, else None."""
    if not data.startswith(PNG_SIGNATURE) or len(data) < 33:
        return None
    pos, idat, header = 8, [], None
    end = len(data)
    while pos + 12 <= end:
        length, kind = struct.unpack_from(">I4s", data, pos)
        body_end = pos + 8 + length
        if body_end + 4 > end:
            return None
        if zlib.crc32(data[pos + 4 : body_end]) != struct.unpack_from(">I", data, body_end)[0]:
            return None  # Pillow's answer for a damaged chunk is Pillow's to give
        if kind == b"IHDR":
            if length != 13:
                return None
            header = struct.unpack_from(">IIBBBBB", data, pos + 8)
        elif kind == b"IDAT":
            idat.append(data[pos + 8 : body_end])
        elif kind == b"IEND":
            break
        pos = body_end + 4
    if header is None or not idat:
        return None
    width, height, depth, colour, compression, filtering, interlace = header
    mode = _FAST_MODES.get((depth, colour))
    if mode is None or compression or filtering or interlace not in (0, 1) or not width or not height:
        return None
    return width, height, mode, bool(interlace), idat


def _binary_l8(idat: list[bytes], width: int, height: int) -> bool | None:
    """Whether a non-interlaced 8-bit grey image holds only 0 and 255; None when a row uses Average or Paeth."""
    try:
        raw = zlib.decompress(b"".join(idat))
    except zlib.error:
        return None
    stride = width + 1
    if len(raw) < stride * height:
        return None
    rows = np.frombuffer(raw, dtype=np.uint8, count=stride * height).reshape(height, stride)
    filters, pixels = rows[:, 0], rows[:, 1:]
    if filters.max() > 2:
        return None
    if not filters.any():
        decoded = pixels
    else:
        # Sub (1): each byte adds the decoded one to its left -> a running sum along the row (mod 256).
        work = pixels.copy()
        sub = filters == 1
        if sub.any():
            work[sub] = np.cumsum(work[sub], axis=1, dtype=np.uint8)
        # Up (2): each byte adds the decoded byte above -> a running sum down each run of Up rows, restarted at
        # every other row (the row above the first is zero).
        anchors = filters != 2
        anchors[0] = True
        total = np.cumsum(work, axis=0, dtype=np.uint8)
        start = np.maximum.accumulate(np.where(anchors, np.arange(height), 0))
        before = np.where((start > 0)[:, None], total[np.maximum(start - 1, 0)], 0).astype(np.uint8)
        decoded = total - before
    return not decoded.tobytes().translate(None, b"\x00\xff")


def _pillow_probe(data: bytes, sha: str, need_binary: bool) -> Probe:
    """The writer's original test, through Pillow: format PNG, size, mode and (for masks) the pixel values."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            if img.format != "PNG":
                return Probe(sha, None)
            facts = (img.size[0], img.size[1], img.mode)
            binary = None
            if need_binary and img.mode == "L":
                values = np.unique(np.asarray(img))
                binary = bool(np.isin(values, (0, 255)).all())
            return Probe(sha, facts, binary)
    except OSError:
        return Probe(sha, None)


def linkable(facts: Probe, role: str, size: tuple[int, int] | None, mode: str) -> bool:
    """True when the source already is exactly what the export would write for it, so it can be placed as is."""
    if facts.png is None:
        return False
    width, height, have = facts.png
    if (size is not None and (width, height) != tuple(size)) or have != mode:
        return False
    return bool(facts.binary) if role == "mask" else True


# ------------------------------------------------------------------------------------------------ the cache


def cache_file(out: Path) -> Path:
    """Where the cache of export folder ``out`` lives (outside it)."""
    root = Path(os.environ.get("ANOGEN_CACHE", Path.home() / ".cache" / "anogen"))
    return root / "export" / f"{hashlib.sha256(str(out).encode()).hexdigest()[:32]}.json"


class SourceCache:
    """Probes of source files by path, trusted while (size, mtime, inode) are unchanged.

    (Whether a whole export is up to date is :mod:`anogen.export.uptodate`'s, in a file of its own beside this one:
    a no-op run then never parses the probes of every source.)
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.started = time.time_ns()
        self.entries: dict[str, list[Any]] = {}
        with contextlib.suppress(OSError, ValueError, TypeError, AttributeError):
            doc = json.loads(path.read_bytes())
            if doc.get("schema_version") == CACHE_SCHEMA:
                self.entries = dict(doc["entries"])
        self.changed = False

    def get(self, path: str, st: os.stat_result, need_binary: bool) -> Probe | None:
        entry = self.entries.get(path)
        if entry is None or entry[0] != st.st_size or entry[1] != st.st_mtime_ns or entry[2] != st.st_ino:
            return None
        if need_binary and entry[4] is not None and entry[4][2] == "L" and entry[5] is None:
            return None  # probed as an image before; a mask needs its pixel values too
        return Probe(entry[3], tuple(entry[4]) if entry[4] is not None else None, entry[5])  # type: ignore[arg-type]

    def is_racy(self, mtime_ns: int) -> bool:
        """Whether a file with this mtime may still change unseen (modified close to when this run began)."""
        return mtime_ns > self.started - int(_RACY_S * 1e9)

    def put(self, path: str, st: os.stat_result, facts: Probe) -> None:
        if self.is_racy(st.st_mtime_ns):
            if self.entries.pop(path, None) is not None:
                self.changed = True
            return
        self.entries[path] = [st.st_size, st.st_mtime_ns, st.st_ino, facts.sha256,
                              list(facts.png) if facts.png else None, facts.binary]
        self.changed = True

    def save(self, keep: set[str] | None = None) -> None:
        """Write the cache (best effort: a read-only home only costs the next run time)."""
        if keep is not None:
            kept = {k: v for k, v in self.entries.items() if k in keep}
            if len(kept) != len(self.entries):
                self.entries, self.changed = kept, True
        if not self.changed and self.path.is_file():
            return  # nothing new: rewriting the same entries would only cost time
        doc = {"schema_version": CACHE_SCHEMA, "entries": self.entries}
        with contextlib.suppress(OSError):
            self.path.parent.mkdir(parents=True, exist_ok=True)
            write_bytes_replace(self.path, json.dumps(doc, separators=(",", ":")).encode())
