"""Every `anogen ...` command shown in the README and docs/ exists, with the flags it is shown with."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import typer

from anogen.cli.app import app

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"```[a-z]*\n(.*?)```", re.S)


def _commands(text: str) -> list[str]:
    found = []
    for block in FENCE.findall(text):
        joined = block.replace("\\\n", " ")
        for line in joined.splitlines():
            line = line.split("#", 1)[0].strip().lstrip("$ ").strip()
            match = re.search(r"(?:^|\s|-m\s)anogen\s+(.*)$", line)
            if match and not line.startswith(("pip ", "python -m pip", "Usage:")):
                found.append(match.group(1))
    return found


def _documented() -> list[tuple[str, str]]:
    pairs = []
    for doc in DOCS:
        for command in _commands(doc.read_text(encoding="utf-8")):
            pairs.append((doc.relative_to(ROOT).as_posix(), command))
    return pairs


def _resolve(words: list[str]):
    command = typer.main.get_command(app)
    for word in words:
        if not hasattr(command, "get_command"):
            break
        sub = command.get_command(typer.Context(command), word)
        if sub is None:
            break
        command = sub
    return command


def test_docs_show_commands() -> None:
    assert len(_documented()) > 20  # the parser really finds the examples


@pytest.mark.parametrize(("doc", "command"), _documented())
def test_documented_command_exists(doc: str, command: str) -> None:
    try:
        words = shlex.split(command)
    except ValueError:
        words = command.split()
    words = [w for w in words if not w.startswith(("|", ">", "&"))]
    cut = next((i for i, w in enumerate(words) if w in ("|", ">", "&&", ";")), len(words))
    words = words[:cut]
    command_obj = _resolve([w for w in words if not w.startswith("-")][:2])
    assert not hasattr(command_obj, "list_commands") or not words, f"{doc}: `anogen {command}` names no command"
    known = set()
    for param in command_obj.params:
        known.update(getattr(param, "opts", []))
        known.update(getattr(param, "secondary_opts", []))
    known.update({"--help"})
    for word in words:
        if word.startswith("-") and word not in ("-", "--"):
            flag = word.split("=", 1)[0]
            assert flag in known, f"{doc}: `anogen {command}` uses {flag}, which `{command_obj.name}` does not have"
