"""BCM, the background compensation of the whole branch's ``attn1`` keys and values (:class:`BCM`)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from anogen.model.fast_path import _compute_dtype, _fast, _InferenceCache, _version_key, _wide
from anogen.model.layers import _cast, _linear, _seeded_linear


class BCM(nn.Module):
    """Background compensation for one ``attn1``: keys/values of the whole branch from the background.

    ``kv = (1 - a) * h + a * fc2(fc1(h_ref))`` for the whole-branch rows; ``a`` starts at 0, so a fresh BCM is
    exactly the identity.

    Args:
        channels (`int`): the ``attn1`` input width C.
        generator (`torch.Generator`): seeds ``fc1`` and ``fc2``.
        width (`int`, *optional*): hidden width H of the mixing MLP (``fc1`` C->H, ``fc2`` H->C); ``None`` is C.
    """

    def __init__(self, channels: int, generator: torch.Generator, width: int | None = None):
        super().__init__()
        hidden = width or channels
        self.fc1 = _seeded_linear(channels, hidden, generator)
        self.fc2 = _seeded_linear(hidden, channels, generator)
        self.alpha = nn.Parameter(torch.zeros(()))
        self.fast_inference = True
        self._cache = _InferenceCache()

    def mix(self, hidden_states: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
        """``hidden_states`` (2P, N, C) pairs, ``reference`` (P, N, C) -> key/value input (2P, N, C)."""
        pairs = hidden_states.unflatten(0, (-1, 2))
        if reference.shape[0] != pairs.shape[0]:
            raise ValueError(
                f"BCM: {reference.shape[0]} background rows for {pairs.shape[0]} pairs (one background per pair)"
            )
        whole = pairs[:, 0]
        # fc2(fc1(.)) has no non-linearity: one folded C->C matmul at inference, unless the hidden width H is
        # a bottleneck narrow enough (C > 2H) that the two thin matmuls cost less
        if _fast(self) and self.fc1.out_features * 2 >= self.fc1.in_features:
            params = (self.fc1.weight, self.fc1.bias, self.fc2.weight, self.fc2.bias)
            weight, bias = self._cache.get(
                _version_key(*params),
                _compute_dtype(whole),
                lambda: (
                    _wide(self.fc2.weight) @ _wide(self.fc1.weight),
                    _wide(self.fc2.weight) @ _wide(self.fc1.bias) + _wide(self.fc2.bias),
                ),
            )
            projected = F.linear(reference.to(whole.dtype), weight, bias)  # type: ignore[arg-type]
        else:
            projected = _linear(_linear(reference.to(whole.dtype), self.fc1), self.fc2)
        mixed = whole + _cast(self.alpha, whole) * (projected - whole)
        return torch.stack([mixed, pairs[:, 1]], dim=1).flatten(0, 1)
