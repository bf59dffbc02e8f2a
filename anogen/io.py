"""Atomic file writes, image reading/writing, hashing and safe names: the I/O every verb shares."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import tempfile
import unicodedata
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import numpy as np
from PIL import Image

SCHEMA_VERSION = 1


def _read_umask() -> int:
    """The process umask, read without changing it where the system allows (Linux reports it in /proc)."""
    try:
        with open("/proc/self/status", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    # Elsewhere only set-and-restore reads it; os.umask is process-wide, which is why this runs once, at import.
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_UMASK = _read_umask()


def file_mode() -> int:
    """The mode a plain ``open(path, "w")`` gives a new file under the umask anogen started with (0644 under 022)."""
    return 0o666 & ~_UMASK


@contextlib.contextmanager
def replacing(tmp: str | os.PathLike[str], path: str | os.PathLike[str]) -> Iterator[None]:
    """Rename ``tmp``, which the block makes, over ``path`` when the block succeeds; remove it when anything fails.

    Every temp-file write here goes through it, so a reader sees the old file or the complete new one, and no
    failure leaves a temp file behind.
    """
    try:
        yield
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def atomic_open(path: str | Path, mode: str = "wb", encoding: str | None = None) -> Iterator[IO[Any]]:
    """Write to a temporary file beside ``path`` and rename it into place only if the block succeeds.

    A reader (or a resumed run) therefore sees either the old file or the complete new one, never a torn one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    with replacing(tmp_name, path), os.fdopen(fd, mode, encoding=encoding) as handle:
        # mkstemp creates the file 0600 whatever the umask; others must be able to read exported trees,
        # reports and adapters on a shared disk as they could any file written with open().
        if hasattr(os, "fchmod"):
            os.fchmod(handle.fileno(), file_mode())
        yield handle
        handle.flush()
        os.fsync(handle.fileno())


def write_bytes_atomic(path: str | Path, data: bytes) -> None:
    with atomic_open(path, "wb") as handle:
        handle.write(data)


def write_text_atomic(path: str | Path, text: str) -> None:
    with atomic_open(path, "w", encoding="utf-8") as handle:
        handle.write(text)


def write_json_atomic(path: str | Path, data: Any) -> None:
    write_text_atomic(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def save_png_atomic(path: str | Path, image: Image.Image | np.ndarray) -> None:
    """Save a PNG atomically; arrays are uint8 HxW (grey) or HxWx3 (RGB)."""
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    with atomic_open(path, "wb") as handle:
        # A fixed compression level keeps the bytes identical across runs of the same command.
        image.save(handle, format="PNG", compress_level=6)


def sha256_file(path: str | Path, chunk_size: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(chunk_size), b""):
            digest.update(chunk)
    return digest.hexdigest()


def load_rgb(path: str | Path) -> Image.Image:
    """Open any image the readers accept (grey, RGBA, 16-bit) as 8-bit RGB."""
    with Image.open(path) as img:
        img.load()
        return to_rgb(img)


def to_rgb(img: Image.Image) -> Image.Image:
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img, dtype=np.float64)
        peak = 65535.0 if arr.max() > 255 else 255.0
        img = Image.fromarray(np.clip(arr / peak * 255.0 + 0.5, 0, 255).astype(np.uint8), mode="L")
    if img.mode in ("RGBA", "LA", "P", "PA"):
        # Transparent pixels become black, as a viewer on a dark canvas would show them.
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        img = Image.alpha_composite(background, rgba)
    return img.convert("RGB")


def load_mask(path: str | Path) -> np.ndarray:
    """Read a mask as a boolean HxW array (> 0 is anomalous, whatever the stored values)."""
    with Image.open(path) as img:
        img.load()
        arr = np.asarray(img)
    if arr.ndim == 3:
        arr = arr[..., :3].max(axis=-1) if arr.shape[-1] >= 3 else arr[..., 0]
    return arr > 0


def mask_to_png_array(mask: np.ndarray) -> np.ndarray:
    """Boolean or 0/1 mask -> uint8 0/255, the only values a written mask may hold."""
    return np.where(np.asarray(mask) > 0, 255, 0).astype(np.uint8)


def canonical_safetensors(data: bytes) -> bytes:
    """The same safetensors file with its ``__metadata__`` keys sorted.

    safetensors writes the metadata from a hash map, in an order that changes from call to call; sorting it
    (same length, so every tensor offset stays valid) makes equal content give equal bytes.
    """
    size = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + size])
    if isinstance(header.get("__metadata__"), dict):
        header["__metadata__"] = dict(sorted(header["__metadata__"].items()))
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    if len(text) > size:
        return data
    return data[:8] + text.ljust(size, b" ") + data[8 + size :]


_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def safe_name(name: str, *, fallback: str = "unnamed") -> str:
    """Turn a name taken from a user's folder into one path component that cannot escape its parent.

    ``../x`` becomes ``x``, separators and control characters become ``_``, accents are folded to ASCII.
    """
    folded = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode("ascii")
    cleaned = _UNSAFE.sub("_", folded).strip("._-")
    return cleaned or fallback


def natural_key(text: str) -> list[Any]:
    """Sort key that orders ``2.png`` before ``10.png``."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", text)]


def write_bytes_replace(path: str | Path, data: bytes, *, tmp: str | Path | None = None) -> os.stat_result:
    """Write ``data`` to a temp file beside ``path`` and rename it into place, without forcing it to disk.

    Readers and a resumed run see the old file or the complete new one, even if the process is killed; after a
    power loss the new file may be empty or torn until the caller has synced (:func:`sync_filesystem`), which
    callers writing many files do once at their checkpoints instead of once per file. The file gets the mode a
    plain ``open()`` would give (0o666 less the umask). ``tmp`` names the temp file (default: ``.<name>.<pid>.tmp``).
    Returns the written file's ``stat``.
    """
    path = Path(path)
    tmp_name = os.fspath(tmp) if tmp is not None else os.path.join(path.parent, f".{path.name}.{os.getpid()}.tmp")
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(tmp_name, flags, 0o666)
    except FileNotFoundError:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(tmp_name, flags, 0o666)
    with replacing(tmp_name, path):
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            stat = os.fstat(fd)
        finally:
            os.close(fd)
    return stat


def encode_png(image: Image.Image | np.ndarray) -> bytes:
    """The bytes :func:`save_png_atomic` writes for ``image`` (same fixed compression level)."""
    import io

    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=6)
    return buffer.getvalue()


def sync_filesystem(path: str | Path) -> None:
    """Force everything written to the file system holding ``path`` onto the disk (``syncfs``, else ``sync``)."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        fd = os.open(path, os.O_RDONLY)
        try:
            if libc.syncfs(fd) == 0:
                return
        finally:
            os.close(fd)
    except (OSError, AttributeError):
        pass
    os.sync()


def fsync_dir(path: str | Path) -> None:
    """Make the renames inside folder ``path`` durable (a no-op where folders cannot be opened, e.g. Windows)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
