"""``run.json``, what made a synth defect folder: :class:`RunRecord`, reading and writing it. No torch."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from anogen.errors import InputError
from anogen.io import SCHEMA_VERSION, write_json_atomic
from anogen.records.adapter import BackboneRef, RecordedSplit, _dict_or_empty, _int_or_none, _str_or_none

RUN_JSON = "run.json"


@dataclass(frozen=True)
class AdapterLink:
    """The adapter a synth folder was made with, as its ``run.json`` names it."""

    path: str | None
    sha256: str | None
    steps_done: int | None

    @classmethod
    def from_value(cls, value: Any) -> AdapterLink:
        values = _dict_or_empty(value)
        return cls(_str_or_none(values.get("path")), _str_or_none(values.get("sha256")),
                   _int_or_none(values.get("steps_done")))


@dataclass(frozen=True)
class RunRecord:
    """One ``run.json``, typed; ``raw`` is the whole JSON object (unknown fields survive a rewrite).

    Attributes:
        category, defect: what the folder holds samples of (``None`` when not recorded).
        adapter: the adapter that made it (path, sha256, steps it had).
        backbone, data, prior, prompts: copied from the adapter's ``adapter.json``.
        split: the few-shot split, when run.json records one (older outputs leave it to ``adapter.json``).
        sample: the sample config (empty when not recorded).
        mask, verify: the mask and verify configs, ``None`` when not recorded as objects.
        seed: the global seed; count: the accepted samples asked for; kept_count: the largest count ever kept.
        last_run: the last run's speed (``samples_per_s``; empty when not recorded).
        folder: the synth folder it was read from.
    """

    category: str | None
    defect: str | None
    adapter: AdapterLink
    backbone: BackboneRef
    data: dict[str, Any]
    prior: str | None
    prompts: Any
    split: RecordedSplit | None
    sample: dict[str, Any]
    mask: dict[str, Any] | None
    verify: dict[str, Any] | None
    seed: Any
    count: int | None
    kept_count: int | None
    last_run: dict[str, Any]
    raw: dict[str, Any] = field(repr=False)
    folder: Path | None = None

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any], folder: Path | None = None) -> RunRecord:
        values = dict(raw)
        mask, verify = values.get("mask"), values.get("verify")
        return cls(
            category=_str_or_none(values.get("category")),
            defect=_str_or_none(values.get("defect")),
            adapter=AdapterLink.from_value(values.get("adapter")),
            backbone=BackboneRef.from_value(values.get("backbone")),
            data=_dict_or_empty(values.get("data")),
            prior=_str_or_none(values.get("prior")),
            prompts=values.get("prompts"),
            split=RecordedSplit.from_value(values.get("split")),
            sample=_dict_or_empty(values.get("sample")),
            mask=dict(mask) if isinstance(mask, Mapping) else None,
            verify=dict(verify) if isinstance(verify, Mapping) else None,
            seed=values.get("seed"),
            count=_int_or_none(values.get("count")),
            kept_count=_int_or_none(values.get("kept_count")),
            last_run=_dict_or_empty(values.get("last_run")),
            raw=values,
            folder=folder,
        )

    @property
    def config(self) -> dict[str, Any]:
        """A resolved config, as ``adapter.json`` has one: run.json records none, so this is empty unless a
        future layout adds it (code that takes either record reads backbone settings from here)."""
        return _dict_or_empty(self.raw.get("config"))


def read_run_record(folder: str | Path) -> RunRecord | None:
    """``folder/run.json``, or ``None`` when the folder has none; InputError if it is not a JSON object."""
    path = Path(folder) / RUN_JSON
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise InputError(f"{path}: not valid JSON ({exc})", path=path) from exc
    if not isinstance(data, dict):
        raise InputError(f"{path}: expected a JSON object", path=path)
    return RunRecord.from_dict(data, Path(folder))


def write_run_json(folder: str | Path, data: Mapping[str, Any]) -> Path:
    """Write ``folder/run.json`` atomically; ``schema_version`` is this anogen's unless ``data`` carries one."""
    path = Path(folder) / RUN_JSON
    write_json_atomic(path, {"schema_version": SCHEMA_VERSION, **data})
    return path
