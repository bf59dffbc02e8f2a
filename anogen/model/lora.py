"""Per-branch LoRA on one linear projection of a UNet attention module (:class:`BranchLoRA`)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from anogen.model.fast_path import _compute_dtype, _InferenceCache, _version_key, _wide
from anogen.model.layers import _cast


class BranchLoRA(nn.Module):
    """Two LoRAs (one per branch) on one linear projection.

    Args:
        in_features (`int`), out_features (`int`): the projection's sizes.
        rank (`int`): LoRA rank r.
        scale (`float`): alpha / r.
        generator (`torch.Generator`): seeds the down-projections, N(0, (1/r)^2).

    Attributes:
        down (`torch.Tensor` of shape `(2, r, in_features)`): branch-stacked down-projections (0 = whole).
        up (`torch.Tensor` of shape `(2, out_features, r)`): branch-stacked up-projections, zero at init.
    """

    def __init__(self, in_features: int, out_features: int, rank: int, scale: float, generator: torch.Generator):
        super().__init__()
        self.scale = scale
        down = torch.empty(2, rank, in_features)
        down.normal_(0.0, 1.0 / rank, generator=generator)
        self.down = nn.Parameter(down)
        self.up = nn.Parameter(torch.zeros(2, out_features, rank))
        self.fast_inference = True
        self._cache = _InferenceCache()

    def delta(self, x: torch.Tensor, mode: str) -> torch.Tensor:
        """The LoRA term for ``x`` (``(2P, N, in)`` pairs in ``main`` mode, ``(P, N, in)`` whole rows in ``record``)."""
        down, up = _cast(self.down, x), _cast(self.up, x) * self.scale
        if mode == "record":
            return F.linear(F.linear(x, down[0]), up[0])
        # (P, 2, N, in) view; the branch-stacked weights broadcast over P, so both branches run in one batched
        # matmul per factor and the result is already in the pair layout (no stack/interleave copy)
        pairs = x.unflatten(0, (-1, 2))
        mid = torch.matmul(pairs, down.transpose(1, 2).unsqueeze(0))
        return torch.matmul(mid, up.transpose(1, 2).unsqueeze(0)).flatten(0, 1)

    def merged(self, base: nn.Linear, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Per-branch merged weights ``W_b = W + scale * up_b @ down_b``, transposed to ``(2, in, out)``, and the
        base bias, in ``dtype``; cached until one of the weights changes (inference only: no gradient)."""

        def build() -> tuple[torch.Tensor, torch.Tensor | None]:
            weight = _wide(base.weight) + self.scale * torch.matmul(_wide(self.up), _wide(self.down))
            return weight.transpose(1, 2), base.bias

        key = _version_key(base.weight, base.bias, self.up, self.down)
        weight_t, bias = self._cache.get(None if key is None else (*key, self.scale), dtype, build)
        assert weight_t is not None
        return weight_t, bias

    def project_merged(self, base: nn.Linear, x: torch.Tensor, mode: str) -> torch.Tensor:
        """``base(x) + delta(x, mode)`` with the merged weights: one matmul per branch, the FLOPs of ``base(x)``."""
        dtype = _compute_dtype(x)
        weight_t, bias = self.merged(base, dtype)
        x = x.to(dtype)
        if mode == "record":
            return F.linear(x, weight_t[0].t(), bias)
        pairs = x.unflatten(0, (-1, 2))  # (P, 2, N, in)
        n_pairs, _, tokens, in_features = pairs.shape
        out = x.new_empty(n_pairs, 2, tokens, weight_t.shape[-1])
        # one batched matmul per branch on the strided (P, N, in) view, written straight into the pair layout:
        # no copy of the activations and no broadcast copy of the weights
        for b in (0, 1):
            weight = weight_t[b].expand(n_pairs, in_features, weight_t.shape[-1])
            if bias is None:
                torch.bmm(pairs[:, b], weight, out=out[:, b])
            else:
                torch.baddbmm(bias, pairs[:, b], weight, out=out[:, b])
        return out.flatten(0, 1)
