"""Training checkpoints: adapter weights and AdamW state as ``state.safetensors`` + ``state.json`` (never
pickled), written atomically and read back for ``--resume``."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from anogen import __version__
from anogen.config import to_jsonable
from anogen.errors import CompatibilityError
from anogen.fit.resume import CHECKPOINT_SCHEMA_VERSION, _checkpoints, _read_state
from anogen.io import canonical_safetensors, write_json_atomic

if TYPE_CHECKING:
    from anogen.model.dual import DualAdapter


# ------------------------------------------------------------------------------------------ checkpoints


def _trainable_state(adapter: DualAdapter) -> dict[str, torch.Tensor]:
    return {f"param.{i:05d}": p.detach().cpu().contiguous() for i, p in enumerate(adapter.trainable_parameters())}


def _optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """AdamW state as safetensors-able tensors plus a JSON part (never pickled)."""
    state = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, Any] = {}
    for index, entries in state["state"].items():
        for name, value in entries.items():
            if torch.is_tensor(value):
                tensors[f"optim.{int(index):05d}.{name}"] = value.detach().cpu().contiguous()
            else:
                scalars[f"{int(index)}.{name}"] = value
    return tensors, {"param_groups": to_jsonable(state["param_groups"]), "scalars": scalars}


def save_checkpoint(
    folder: Path,
    step: int,
    adapter: DualAdapter,
    optimizer: torch.optim.Optimizer,
    resume_key: dict[str, Any],
    keep: int,
    scaler_state: dict[str, Any] | None = None,
    target_steps: int | None = None,
) -> Path:
    """Write ``checkpoints/step-NNNNNN/`` (``state.safetensors`` + ``state.json``) atomically, keep ``keep``.

    ``target_steps`` (the steps the run aims at) lets a later ``--resume`` continue to the same target.
    """
    from safetensors.torch import save

    root = folder / "checkpoints"
    final = root / f"step-{step:06d}"
    tmp = root / f".step-{step:06d}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    tensors = _trainable_state(adapter)
    opt_tensors, opt_json = _optimizer_tensors(optimizer)
    tensors.update(opt_tensors)
    data = save(tensors, metadata={"anogen_version": __version__, "step": str(step)})
    with open(tmp / "state.safetensors", "wb") as handle:
        handle.write(canonical_safetensors(data))
    state = {
        "schema_version": CHECKPOINT_SCHEMA_VERSION,
        "step": step,
        "resume_key": resume_key,
        "optimizer": opt_json,
        "scaler": scaler_state,
        "num_trainable_tensors": len(adapter.trainable_parameters()),
    }
    if target_steps is not None:
        state["target_steps"] = target_steps
    write_json_atomic(tmp / "state.json", state)
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    for old in _checkpoints(folder)[: -max(keep, 1)]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def load_checkpoint(checkpoint: Path, adapter: DualAdapter, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """Restore adapter weights and optimizer state from one of our checkpoints (safetensors + JSON only)."""
    from safetensors.torch import load_file

    state = _read_state(checkpoint)
    tensors = load_file(str(checkpoint / "state.safetensors"), device="cpu")
    params = adapter.trainable_parameters()
    if state.get("num_trainable_tensors") != len(params):
        raise CompatibilityError(f"{checkpoint}: it holds another number of trainable tensors than this adapter")
    with torch.no_grad():
        for i, param in enumerate(params):
            value = tensors[f"param.{i:05d}"]
            if value.shape != param.shape:
                raise CompatibilityError(f"{checkpoint}: tensor {i} has shape {tuple(value.shape)}, not {param.shape}")
            param.copy_(value.to(param.dtype))
    opt = state["optimizer"]
    entries: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, index, name = key.split(".", 2)
            entries.setdefault(int(index), {})[name] = value
    for key, value in opt["scalars"].items():
        index, name = key.split(".", 1)
        entries.setdefault(int(index), {})[name] = value
    optimizer.load_state_dict({"state": entries, "param_groups": opt["param_groups"]})
    return state
