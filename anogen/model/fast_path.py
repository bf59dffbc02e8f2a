"""The no-grad inference fast path of the dual modules: when it applies and the cache of folded weights."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

# ------------------------------------------------------------------------- inference fast path (no grad)
#
# Without autograd the adapter's weights are constants between optimiser steps, so products of them can be
# precomputed: per-branch merged LoRA weights, SAIM's proj_in folded into q/k/v, BCM's fc1 folded into fc2.
# The results equal the plain path's up to float rounding (tests/model/test_dual.py checks it). Training, i.e.
# any call with gradients enabled, always takes the plain path, so gradients reach the unmerged weights and
# the parameters (and the adapter file's keys) are the same either way.


def _fast(module: nn.Module) -> bool:
    """Whether ``module`` computes with its precomputed inference weights in this call."""
    return getattr(module, "fast_inference", True) and not torch.is_grad_enabled()


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype the matmuls of ``x`` run in: the autocast dtype inside an autocast region, else ``x``'s own."""
    if x.is_floating_point() and torch.is_autocast_enabled(x.device.type):
        return torch.get_autocast_dtype(x.device.type)
    return x.dtype


def _version_key(*tensors: torch.Tensor | None) -> tuple[Any, ...] | None:
    """Identity and in-place version of ``tensors``: changes whenever one of them is replaced or modified in place
    (optimiser steps, ``load_adapter_state_dict``, ``.to()``); ``None`` when a tensor keeps no version counter
    (created under ``torch.inference_mode``), which disables caching."""
    key: list[Any] = []
    for t in tensors:
        if t is None:
            key.append(None)
            continue
        try:
            key.append((t.data_ptr(), t._version, t.dtype, t.device, tuple(t.shape)))
        except RuntimeError:  # inference tensors have no version counter
            return None
    return tuple(key)


def _wide(t: torch.Tensor) -> torch.Tensor:
    """``t`` in float64 to fold weights with (float32 where the device has no float64)."""
    return t.float() if t.device.type == "mps" else t.double()


class _InferenceCache:
    """One slot per compute dtype of precomputed weights, rebuilt when its source tensors change.

    A plain attribute, not a buffer: it never reaches ``state_dict`` (the adapter file is unchanged) and
    ``.to()`` does not move it (the key holds the device, so moving the adapter rebuilds it).
    """

    def __init__(self) -> None:
        self.slots: dict[torch.dtype, tuple[tuple[Any, ...], tuple[torch.Tensor | None, ...]]] = {}

    def get(self, key: tuple[Any, ...] | None, dtype: torch.dtype, build: Any) -> tuple[torch.Tensor | None, ...]:
        slot = self.slots.get(dtype)
        if key is not None and slot is not None and slot[0] == key:
            return slot[1]
        with torch.no_grad():
            value = tuple(None if t is None else t.to(dtype).contiguous() for t in build())
        if key is not None:
            self.slots[dtype] = (key, value)
        return value

    def clear(self) -> None:
        self.slots.clear()
