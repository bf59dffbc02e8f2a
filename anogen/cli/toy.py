"""``anogen toy make``: write the built-in toy categories (procedural, MVTec AD layout, deterministic by seed)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from anogen.cli._common import JsonOpt, QuietOpt, epilog, make_output

app = typer.Typer(help="The built-in toy world: procedural data for demos and tests.", no_args_is_help=True)

EPILOG = epilog(
    "anogen toy make data/toy",
    "anogen toy make data/toy --kind object --seed 3 --size 128",
    "anogen toy make data/toy --kind object --background textured --name object_textured --json",
)


@app.command("make", epilog=EPILOG)
def make_cmd(
    out: Annotated[Path, typer.Argument(help="Dataset root; each category becomes OUT/<kind> (or OUT/<name>).")],
    kind: Annotated[
        list[str] | None, typer.Option("--kind", help="object | texture (repeatable; default: both).")
    ] = None,
    seed: Annotated[int, typer.Option("--seed", help="Data seed: the same seed writes the same bytes.")] = 0,
    size: Annotated[int, typer.Option("--size", help="Image side in pixels (>= 32).")] = 64,
    background: Annotated[
        str, typer.Option("--background", help="plain | textured (a noisy background; object kind only).")
    ] = "plain",
    name: Annotated[
        str | None, typer.Option("--name", help="Category folder name (one kind only; default: the kind).")
    ] = None,
    n_train: Annotated[int, typer.Option("--n-train", help="Normal images in train/good.")] = 60,
    n_per_defect: Annotated[int, typer.Option("--n-per-defect", help="Images per defect type in test/.")] = 10,
    quiet: QuietOpt = False,
    json_output: JsonOpt = False,
) -> None:
    """Write toy categories: an object on a background (with object masks) and a texture.

    Three defect types with exact masks: stain (magenta blob), scratch (thin near-white line), hole (near-black
    disc); each is found again in an image by its colour rule (see docs/toy.md). A toy.json marker in each
    category says it is toy data.
    """
    from anogen.errors import InputError
    from anogen.toy.data import KINDS, make_category

    out_ = make_output(quiet=quiet, json_mode=json_output)
    kinds = list(kind or KINDS)
    bad = [k for k in kinds if k not in KINDS]
    if bad:
        raise InputError(f"unknown toy kind {', '.join(bad)} (choose from {', '.join(KINDS)})")
    if name is not None and len(kinds) != 1:
        raise InputError("--name needs exactly one --kind")
    written = []
    with out_.progress() as display:
        for k in kinds:
            bg = background if k == "object" else "plain"
            folder = make_category(out, k, seed=seed, size=size, background=bg, n_train=n_train,
                                   n_per_defect=n_per_defect, name=name, progress=display)
            written.append({"kind": k, "path": str(folder), "seed": seed, "size": size, "background": bg})
    out_.emit_json({"categories": written})
    for row in written:
        out_.result(f"wrote {row['path']} ({row['kind']}, {row['size']} px, seed {row['seed']})")
