"""Adapter files: ``adapter.safetensors`` (every trainable weight) + ``adapter.json`` (what made it).

Weights are written and read with safetensors only; nothing here ever unpickles a file. ``adapter.json`` (read
and written through :mod:`anogen.records.adapter`, which holds its fields) names the backbone (source and content
hash) so that an adapter is refused, in one line, by any other backbone.

Schema versions of ``adapter.json``: 1 = per-branch LoRA + SAIM (+ text-encoder LoRA); 2 = may also carry BCM
weights (``unet.<layer>.bcm.*``). Both load; a newer version is refused with a hint to upgrade.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from anogen.config import AdapterConfig
from anogen.errors import CompatibilityError, InputError
from anogen.io import atomic_open, canonical_safetensors, sha256_file
from anogen.records.adapter import ADAPTER_JSON, AdapterRecord, read_adapter_record, write_adapter_record

if TYPE_CHECKING:
    from anogen.model.backbone import Backbone
    from anogen.model.dual import DualAdapter

logger = logging.getLogger(__name__)

ADAPTER_SCHEMA_VERSION = 2
READABLE_SCHEMA_VERSIONS = (1, 2)
WEIGHTS_FILE = "adapter.safetensors"
FORMAT_NAME = "anogen-dual-adapter"


def _anogen_version() -> str:
    from anogen import __version__

    return __version__


SAVE_DTYPES = ("fp32", "fp16")


def save_adapter(
    adapter: DualAdapter, folder: str | Path, record: Mapping[str, Any], *, dtype: str = "fp32"
) -> AdapterRecord:
    """Write ``folder/adapter.safetensors`` and ``folder/adapter.json``, each atomically (weights first).

    Args:
        adapter (`DualAdapter`): the weights to save (their stable keys: ``DualAdapter.adapter_state_dict``).
        folder (`Path`): the defect's run folder (created if needed).
        record (`Mapping`): the fields of ``adapter.json`` the caller knows (``fit`` builds them with
            :func:`anogen.records.adapter.fit_fields`: category, defect, config, split, prompts, ...).
            ``schema_version``, ``anogen_version`` and ``adapter_config`` are filled in here;
            ``backbone`` ({``source``, ``content_hash``}) is taken from the record, else from the adapter.
        dtype (`str`, defaults to `"fp32"`): ``fp16`` stores every weight in half precision (half the file;
            loading casts back to fp32; docs/fit.md states what it changes in sampling).

    Returns:
        `AdapterRecord`: what ``adapter.json`` now holds.
    """
    import torch
    from safetensors.torch import save

    if dtype not in SAVE_DTYPES:
        raise ValueError(f"save_adapter: dtype must be one of {SAVE_DTYPES}, got {dtype!r}")

    folder = Path(folder)
    backbone = dict(record.get("backbone") or {})
    backbone.setdefault("source", adapter.backbone_source)
    backbone.setdefault("content_hash", adapter.backbone_hash)
    if not backbone.get("content_hash"):
        raise ValueError(
            "save_adapter: no backbone content_hash (give record['backbone'] or build the adapter "
            "with DualAdapter.from_backbone)"
        )
    full = dict(record)
    full.update(
        schema_version=ADAPTER_SCHEMA_VERSION,
        anogen_version=_anogen_version(),
        backbone=backbone,
        adapter_config=dataclasses.asdict(adapter.config),
        has_bcm=bool(adapter.config.bcm),
        num_parameters=adapter.num_trainable(),
    )
    store = torch.float16 if dtype == "fp16" else torch.float32
    tensors = {k: v.to("cpu", store) for k, v in adapter.adapter_state_dict().items()}
    full["weights_dtype"] = dtype
    metadata = {
        "format": FORMAT_NAME,
        "weights_dtype": dtype,
        "schema_version": str(ADAPTER_SCHEMA_VERSION),
        "anogen_version": full["anogen_version"],
        "backbone_source": str(backbone.get("source")),
        "backbone_content_hash": str(backbone["content_hash"]),
    }
    with atomic_open(folder / WEIGHTS_FILE, "wb") as handle:
        handle.write(canonical_safetensors(save(tensors, metadata=metadata)))
    written = AdapterRecord.from_dict(full, folder)
    write_adapter_record(folder, written)
    return written


def adapter_sha256(folder: str | Path) -> str:
    """sha256 of ``folder/adapter.safetensors`` (what synth manifests record)."""
    path = Path(folder) / WEIGHTS_FILE
    if not path.is_file():
        raise InputError(f"{path} does not exist: not an adapter folder")
    return sha256_file(path)


def adapter_config_from_record(record: AdapterRecord) -> AdapterConfig:
    """The :class:`AdapterConfig` an adapter was built with (``adapter_config``, else ``config.adapter``)."""
    values = record.raw.get("adapter_config")
    if values is None:
        values = record.config.get("adapter")
    if not isinstance(values, dict):
        raise CompatibilityError("adapter.json records no adapter config (adapter_config or config.adapter)")
    known = {f.name for f in dataclasses.fields(AdapterConfig)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise CompatibilityError(f"adapter.json: unknown adapter config fields {unknown} (made by a newer anogen?)")
    return AdapterConfig(**values)


def load_adapter(
    folder: str | Path, backbone: Backbone, *, device: Any = None
) -> tuple[DualAdapter, AdapterRecord]:
    """Load an adapter folder for ``backbone``.

    Args:
        folder (`Path`): holds ``adapter.json`` and ``adapter.safetensors``.
        backbone (`Backbone`): must be the one the adapter was trained on (same content hash).
        device (*optional*): where to put the weights; defaults to the backbone UNet's device.

    Returns:
        `(DualAdapter, AdapterRecord)`: the adapter (not installed) and its ``adapter.json`` record.

    Raises:
        CompatibilityError: another backbone, an unknown schema version, or weights that do not fit.
    """
    from safetensors import safe_open
    from safetensors.torch import load_file

    from anogen.model.dual import DualAdapter

    folder = Path(folder)
    record = read_adapter_record(folder)
    version = record.schema_version
    if version not in READABLE_SCHEMA_VERSIONS:
        raise CompatibilityError(
            f"{folder / ADAPTER_JSON}: adapter schema_version {version!r} is not one this anogen reads "
            f"({', '.join(map(str, READABLE_SCHEMA_VERSIONS))})",
            hint="upgrade anogen to load adapters made by a newer version",
        )
    made_for = record.backbone
    if made_for.content_hash != backbone.content_hash:
        raise CompatibilityError(
            f"{folder / ADAPTER_JSON}: adapter made for backbone {made_for.source!r} "
            f"({str(made_for.content_hash)[:12]}), not for {backbone.source!r} ({backbone.content_hash[:12]})",
            hint=f"load it with --backbone {made_for.source}",
        )
    weights = folder / WEIGHTS_FILE
    if not weights.is_file():
        raise InputError(f"{weights} does not exist (adapter.json without weights)")
    with safe_open(str(weights), framework="pt") as handle:
        metadata = handle.metadata() or {}
    if metadata.get("backbone_content_hash", made_for.content_hash) != made_for.content_hash:
        raise CompatibilityError(f"{weights}: its backbone hash differs from adapter.json's (mixed-up files?)")
    config = adapter_config_from_record(record)
    adapter = DualAdapter.from_backbone(backbone, config, seed=int(record.seed or 0))
    try:
        adapter.load_adapter_state_dict(load_file(str(weights), device="cpu"))
    except CompatibilityError as exc:
        raise CompatibilityError(f"{weights}: {exc.message}") from exc
    if device is not None:
        adapter.to(device)
    logger.info("loaded adapter %s (%d parameters)", folder, adapter.num_trainable())
    return adapter, record
