"""``anogen presets list|show``: the YAML presets shipped with anogen."""

from __future__ import annotations

from typing import Annotated

import typer
import yaml
from rich.table import Table

from anogen.cli._common import JsonOpt, epilog, make_output
from anogen.config import list_presets, load_preset_raw, resolve

app = typer.Typer(help="List and show the shipped presets.", no_args_is_help=True)


@app.command("list", epilog=epilog("anogen presets list", "anogen presets list --json"))
def list_cmd(json_output: JsonOpt = False) -> None:
    """List every shipped preset with its description."""
    out = make_output(json_mode=json_output)
    rows = []
    for name in list_presets():
        raw = load_preset_raw(name)
        rows.append(
            {"name": name, "description": raw.get("description", ""), "validated": bool(raw.get("validated"))}
        )
    out.emit_json(rows)
    table = Table("preset", "validated", "description")
    for row in rows:
        table.add_row(row["name"], "yes" if row["validated"] else "no", row["description"])
    out.table(table)


@app.command("show", epilog=epilog("anogen presets show mvtec/bottle", "anogen presets show toy/object --json"))
def show_cmd(
    name: Annotated[str, typer.Argument(help="Preset name, e.g. mvtec/bottle.")],
    json_output: JsonOpt = False,
) -> None:
    """Show a preset fully resolved: its values merged over every default."""
    out = make_output(json_mode=json_output)
    resolved = resolve(preset=name).to_dict()
    raw = load_preset_raw(name)
    resolved["description"] = raw.get("description", "")
    out.emit_json(resolved)
    out.result(yaml.safe_dump(resolved, sort_keys=False).rstrip())
