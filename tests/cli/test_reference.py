from __future__ import annotations

from pathlib import Path

from anogen.cli.reference import render

DOC = Path(__file__).resolve().parents[2] / "docs" / "cli.md"


def test_cli_reference_is_in_sync_with_the_command_tree() -> None:
    assert DOC.read_text(encoding="utf-8") == render(), (
        "docs/cli.md is stale: run `python -m anogen.cli.reference > docs/cli.md`"
    )
