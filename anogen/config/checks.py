"""Checking the sections a preset, a config file or the command line holds: section and field names and value
types, with a :class:`~anogen.errors.PresetError` that names the first bad key (and, for a choice, the choices)."""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from dataclasses import fields
from typing import Any, Literal, get_args, get_origin, get_type_hints

from anogen.config.sections import SECTIONS
from anogen.errors import PresetError

META_KEYS = ("extends", "description", "validated", "recipe")
COMMAND_LINE = "command-line options"  # the source name of overrides in error messages


def validate_sections(data: Mapping[str, Any], *, source: str, allow_meta: bool) -> None:
    """Check section and field names and value types; raise a PresetError naming the first bad key."""
    for key, section in data.items():
        if key in META_KEYS:
            if not allow_meta:
                raise PresetError(f"{source}: {key!r} is only allowed in presets")
            continue
        if key not in SECTIONS:
            known = ", ".join([*SECTIONS, *META_KEYS])
            raise PresetError(f"{source}: unknown section {key!r} (known: {known})")
        if section is None:
            continue
        if not isinstance(section, Mapping):
            raise PresetError(f"{source}: section {key!r} must be a mapping")
        cls = SECTIONS[key]
        hints = get_type_hints(cls)
        names = {f.name for f in fields(cls)}
        for name, value in section.items():
            if name not in names:
                close = difflib.get_close_matches(str(name), sorted(names), n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise PresetError(f"{source}: unknown key {key}.{name}{hint}")
            if not _value_fits(value, hints[name]):
                if get_origin(hints[name]) is Literal:
                    # A choice: name the choices, not the type ("unknown sampler 'foo'; choose one of ...").
                    label = name.replace("_", " ")
                    choices = ", ".join(str(a) for a in get_args(hints[name]))
                    if source == COMMAND_LINE:
                        raise PresetError(f"unknown {label} {value!r} ({key}.{name}); choose one of {choices}")
                    raise PresetError(
                        f"{source}: {key}.{name} = {value!r}: unknown {label}; choose one of {choices}"
                    )
                items = get_args(hints[name])[:1]
                if (
                    get_origin(hints[name]) in (tuple, list)
                    and items
                    and get_origin(items[0]) is Literal
                    and isinstance(value, (list, tuple))
                ):
                    # A list of choices (train.flips): name the unknown items and the choices, not the type.
                    choices = ", ".join(str(a) for a in get_args(items[0]))
                    bad = [v for v in value if v not in get_args(items[0])]
                    what = f"{bad[0]!r} is not" if len(bad) == 1 else f"{', '.join(map(repr, bad))} are not"
                    where = f"{key}.{name}" if source == COMMAND_LINE else f"{source}: {key}.{name}"
                    raise PresetError(f"{where} = {list(value)!r}: {what} one of {choices}")
                raise PresetError(f"{source}: {key}.{name} = {value!r} does not fit type {_type_name(hints[name])}")


def _type_name(tp: Any) -> str:
    if isinstance(tp, type) and get_origin(tp) is None:
        return tp.__name__  # "int", not "<class 'int'>"
    return str(tp).replace("typing.", "")


def _value_fits(value: Any, tp: Any) -> bool:
    origin = get_origin(tp)
    args = get_args(tp)
    if tp is Any:
        return True
    if origin is Literal:
        return value in args
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            return False
        inner = args[0] if args else Any
        return all(_value_fits(v, inner) for v in value)
    if args and origin is not None:  # a Union (X | Y)
        return any(_value_fits(value, a) for a in args)
    if tp is type(None):
        return value is None
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(tp, type):
        return isinstance(value, tp)
    return True


def _build_section(cls: type, values: Mapping[str, Any]) -> Any:
    hints = get_type_hints(cls)
    kwargs = {}
    for name, value in values.items():
        if get_origin(hints[name]) is tuple and isinstance(value, list):
            value = tuple(value)
        kwargs[name] = value
    return cls(**kwargs)
