"""The adapter's own linear layers: fp32 weights cast to the UNet's dtype per call, seeded initialisation.

Shared by the LoRA, SAIM and BCM modules of :mod:`anogen.model.dual`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def _cast(weight: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor | None:
    """The adapter keeps fp32 weights; a half-precision UNet without autocast needs them in its dtype."""
    if weight is None or weight.dtype == like.dtype:
        return weight
    return weight.to(like.dtype)


def _linear(x: torch.Tensor, layer: nn.Linear) -> torch.Tensor:
    return F.linear(x, _cast(layer.weight, x), _cast(layer.bias, x))


def _seeded_linear(
    in_features: int, out_features: int, generator: torch.Generator, *, zero: bool = False, bias: bool = True
) -> nn.Linear:
    """An ``nn.Linear`` initialised like PyTorch's default (uniform +-1/sqrt(fan_in)) but from ``generator``.

    Built on the meta device first so that the global RNG is neither read nor advanced.
    """
    layer = nn.Linear(in_features, out_features, bias=bias, device="meta").to_empty(device="cpu")
    with torch.no_grad():
        if zero:
            layer.weight.zero_()
            if bias:
                layer.bias.zero_()
        else:
            bound = 1.0 / math.sqrt(in_features)
            layer.weight.uniform_(-bound, bound, generator=generator)
            if bias:
                layer.bias.uniform_(-bound, bound, generator=generator)
    return layer
