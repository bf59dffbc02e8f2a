"""Generate docs/cli.md from the command tree, so the reference cannot drift from ``--help``.

Run ``python -m anogen.cli.reference > docs/cli.md``; ``tests/cli/test_reference.py`` fails when the file is stale.
"""

from __future__ import annotations

from typing import Any

import typer

from anogen.cli.app import app

HEADER = (
    "# CLI reference\n\n"
    "Generated from the command tree by `python -m anogen.cli.reference > docs/cli.md`; do not edit by hand.\n"
    "Exit codes: 0 ok, 1 runtime error, 2 usage or bad input. `--debug` or `ANOGEN_DEBUG=1` shows tracebacks.\n"
)


def _walk(command: Any, path: list[str]) -> list[tuple[list[str], Any]]:
    found = [(path, command)]
    if hasattr(command, "list_commands"):
        ctx = typer.Context(command)
        for name in sorted(command.list_commands(ctx)):
            sub = command.get_command(ctx, name)
            if sub is not None and not sub.hidden:
                found.extend(_walk(sub, [*path, name]))
    return found


def _param_row(param: Any, ctx: Any) -> str:
    # typer may vendor its own click, so parameters are told apart by kind rather than by class, and options are
    # described by the same help record `--help` prints.
    if param.param_type_name == "argument":
        name = param.metavar or param.name.upper()
        help_text = getattr(param, "help", None) or ""
        return f"| `{name}` | argument | {help_text.replace('|', '/')} |"
    record = param.get_help_record(ctx)
    if record is None:
        return ""
    names, help_text = record
    return f"| `{names}` | option | {help_text.replace('|', '/')} |"


def render() -> str:
    root = typer.main.get_command(app)
    parts = [HEADER]
    for path, command in _walk(root, ["anogen"]):
        title = " ".join(path)
        ctx = typer.Context(command, info_name=title)
        parts.append(f"\n## `{title}`\n")
        if command.help:
            parts.append(command.help.strip() + "\n")
        parts.append(f"\n```\n{command.get_usage(ctx).strip()}\n```\n")
        params = [p for p in command.params if p.name != "help"]
        if params:
            parts.append("\n| parameter | kind | help |\n| --- | --- | --- |\n")
            rows = [_param_row(p, ctx) for p in params]
            parts.append("\n".join(row for row in rows if row) + "\n")
        if command.epilog:
            parts.append("\n" + command.epilog.replace("  $ ", "    $ ").strip() + "\n")
    return "".join(parts)


if __name__ == "__main__":
    import sys

    sys.stdout.write(render())
