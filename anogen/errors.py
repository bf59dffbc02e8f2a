"""Typed errors raised by the library; only the CLI turns them into messages and exit codes."""

from __future__ import annotations

from pathlib import Path


class AnogenError(Exception):
    """A known failure: the CLI prints one line (plus a hint) and exits with ``exit_code``."""

    exit_code: int = 1

    def __init__(self, message: str, *, hint: str | None = None, path: str | Path | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.path = Path(path) if path is not None else None

    def __str__(self) -> str:
        if self.path is not None and str(self.path) not in self.message:
            return f"{self.path}: {self.message}"
        return self.message


class InputError(AnogenError):
    """Bad input or usage: a path, flag, file or config the user can fix. Exit code 2."""

    exit_code = 2


class DataError(InputError):
    """A dataset tree is missing, malformed or holds unreadable files."""


class PresetError(InputError):
    """A preset or config file is unknown or does not match the schema."""


class BackboneError(InputError):
    """A backbone cannot be found, lacks a component or has another architecture."""


class CompatibilityError(InputError):
    """Two artefacts (adapter, checkpoint, synth output) were made with incompatible settings."""
