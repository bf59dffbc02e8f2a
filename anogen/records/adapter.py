"""``adapter.json``, what made a fitted adapter: :class:`AdapterRecord`, the field list ``fit`` writes, reading it
back. No torch (the weights beside it, ``adapter.safetensors``, are :mod:`anogen.model.adapter`'s concern)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from anogen.errors import InputError
from anogen.io import write_json_atomic

if TYPE_CHECKING:
    from anogen.config import ResolvedConfig
    from anogen.data.model import Category
    from anogen.data.split import Split

ADAPTER_JSON = "adapter.json"


def _dict_or_empty(value: Any) -> dict[str, Any]:
    # Recorded sections are read as `section or {}` everywhere: a missing or null section reads as empty.
    return dict(value) if isinstance(value, Mapping) else {}


def _str_or_none(value: Any) -> str | None:
    return None if value is None else str(value)


def _int_or_none(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


@dataclass(frozen=True)
class BackboneRef:
    """The backbone a record names: its source (a Hub id or a path) and the content hash of its weights."""

    source: str | None
    content_hash: str | None

    @classmethod
    def from_value(cls, value: Any) -> BackboneRef:
        values = _dict_or_empty(value)
        return cls(_str_or_none(values.get("source")), _str_or_none(values.get("content_hash")))


@dataclass(frozen=True)
class RecordedSplit:
    """The few-shot split a fit trained on: the stems it saw (``train``) and those it held out (``held_out``).

    A list the record does not hold (absent, or not a list) is ``None``, so each reader keeps its own refusal.
    """

    train: tuple[str, ...] | None
    held_out: tuple[str, ...] | None

    @classmethod
    def from_value(cls, value: Any) -> RecordedSplit | None:
        if not isinstance(value, Mapping):
            return None

        def stems(key: str) -> tuple[str, ...] | None:
            listed = value.get(key)
            return tuple(str(s) for s in listed) if isinstance(listed, list) else None

        return cls(stems("train"), stems("held_out"))


@dataclass(frozen=True)
class AdapterRecord:
    """One ``adapter.json``, typed; ``raw`` is the whole JSON object, so fields this anogen does not know (a
    newer one's) survive and rewriting it is byte-identical.

    Attributes:
        category, defect: what the adapter was fitted on (``None`` when not recorded).
        backbone: the backbone it was fitted on.
        preset: the fit preset (``None`` when fitted from a config file only).
        config: the resolved config fit ran with (``ResolvedConfig.to_dict()``; empty when not recorded).
        adapter_config: the :class:`~anogen.config.AdapterConfig` fields the weights were built with.
        prompts: the (whole, part) prompts as recorded (a ``{"whole", "part"}`` object or a pair), or ``None``.
        split: the few-shot split, or ``None``.
        seed: the training seed.
        data: where the training data came from (``root``, ``format``, ``image_size``, ...; empty if absent).
        prior: the prior folder it used, or ``None``.
        steps_done: the optimiser steps trained.
        schema_version: the ``adapter.json`` layout version.
        folder: the folder it was read from (``None`` for a record built in memory).
    """

    category: str | None
    defect: str | None
    backbone: BackboneRef
    preset: str | None
    config: dict[str, Any]
    adapter_config: dict[str, Any]
    prompts: Any
    split: RecordedSplit | None
    seed: Any
    data: dict[str, Any]
    prior: str | None
    steps_done: int | None
    schema_version: Any
    raw: dict[str, Any] = field(repr=False)
    folder: Path | None = None

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any], folder: Path | None = None) -> AdapterRecord:
        values = dict(raw)
        return cls(
            category=_str_or_none(values.get("category")),
            defect=_str_or_none(values.get("defect")),
            backbone=BackboneRef.from_value(values.get("backbone")),
            preset=_str_or_none(values.get("preset")),
            config=_dict_or_empty(values.get("config")),
            adapter_config=_dict_or_empty(values.get("adapter_config")),
            prompts=values.get("prompts"),
            split=RecordedSplit.from_value(values.get("split")),
            seed=values.get("seed"),
            data=_dict_or_empty(values.get("data")),
            prior=_str_or_none(values.get("prior")),
            steps_done=_int_or_none(values.get("steps_done")),
            schema_version=values.get("schema_version"),
            raw=values,
            folder=folder,
        )

    @property
    def has_bcm(self) -> bool:
        """Whether the weights carry BCM: ``has_bcm`` (schema 2), else the adapter config's ``bcm`` (schema 1)."""
        if "has_bcm" in self.raw:
            return bool(self.raw["has_bcm"])
        return bool(self.adapter_config.get("bcm", False))

    def to_json(self) -> dict[str, Any]:
        """The JSON object ``adapter.json`` holds (``raw``, every field as read or built)."""
        return dict(self.raw)


def fit_fields(
    category: Category,
    defect: str,
    config: ResolvedConfig,
    backbone: BackboneRef,
    split: Split,
    prior: Path | None,
    steps_done: int,
    *,
    anogen_version: str,
    versions: Mapping[str, str],
) -> dict[str, Any]:
    """The fields of ``adapter.json`` that ``fit`` knows; ``save_adapter`` adds those of the weights."""
    return {
        "anogen_version": anogen_version,
        "category": category.name,
        "defect": defect,
        "backbone": {"source": backbone.source, "content_hash": backbone.content_hash},
        "preset": config.preset,
        "config": config.to_dict(),
        "prompts": {"whole": config.adapter.prompt_whole, "part": config.adapter.prompt_part},
        "split": split.to_dict(),
        "seed": config.train.seed,
        "data": {
            "root": str(category.root),
            "format": category.dataset_format,
            "category": category.name,
            "image_size": list(category.image_size) if category.image_size else None,
            "grayscale": category.is_grayscale,
            "kind": category.kind.value if category.kind is not None else None,
        },
        "prior": str(prior) if prior is not None else None,
        "versions": dict(versions),
        "steps_done": steps_done,
    }


def read_adapter_record(folder: str | Path) -> AdapterRecord:
    """``folder/adapter.json`` (no torch import); InputError if it is missing or unreadable."""
    path = Path(folder) / ADAPTER_JSON
    if not path.is_file():
        raise InputError(f"{path} does not exist: not an adapter folder", hint="run `anogen fit` to make one")
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InputError(f"{path} is not readable JSON ({exc})") from exc
    if not isinstance(record, dict):
        raise InputError(f"{path} does not hold a JSON object")
    return AdapterRecord.from_dict(record, Path(folder))


def write_adapter_record(folder: str | Path, record: AdapterRecord) -> Path:
    """Write ``folder/adapter.json`` atomically."""
    path = Path(folder) / ADAPTER_JSON
    write_json_atomic(path, record.to_json())
    return path
