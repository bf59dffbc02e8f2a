"""SAIM, the self-attention interaction module coupling the two branches of each pair (:class:`SAIM`)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from anogen.model.fast_path import _compute_dtype, _fast, _InferenceCache, _version_key, _wide
from anogen.model.layers import _cast, _linear, _seeded_linear


def _saim_bilinear(channels: int, width: int) -> bool:
    """Whether SAIM's folded C x C form (about 1.5 C^2 multiply-adds per row) is cheaper than keeping the
    C -> W bottleneck (about 2 C W + 2.5 W^2)."""
    return 1.5 * channels**2 <= 2 * channels * width + 2.5 * width**2


class SAIM(nn.Module):
    """Self-attention interaction module: the two branches of each pair attend to each other per position.

    For every spatial token the pair (whole, part) forms a 2-token sequence: LayerNorm -> Linear C->W ->
    single-head attention (q, k, v Linear W->W with bias) -> Linear W->C (zero-initialised) -> added to the
    input. With only two keys, softmax([s0, s1])[0] = sigmoid(s0 - s1) exactly, so the attention is computed
    in closed form on ``(P, 2, N, W)`` views, without the permute copies an SDPA call over a length-2 axis needs.

    Args:
        channels (`int`): C, the attention module's output width.
        width (`int`): W, the interaction width (a bottleneck when < C).
        generator (`torch.Generator`): seeds every Linear (``proj_out`` too unless ``zero_out``).
        zero_out (`bool`, defaults to True): zero-initialise ``proj_out`` so that a fresh SAIM is the identity;
            False initialises it like every other Linear, as the reference implementation does.
    """

    def __init__(self, channels: int, width: int, generator: torch.Generator, *, zero_out: bool = True):
        super().__init__()
        self.width = width
        self.norm = nn.LayerNorm(channels)
        self.proj_in = _seeded_linear(channels, width, generator)
        self.q = _seeded_linear(width, width, generator)
        self.k = _seeded_linear(width, width, generator)
        self.v = _seeded_linear(width, width, generator)
        self.proj_out = _seeded_linear(width, channels, generator, zero=zero_out)
        self.fast_inference = True
        self._cache = _InferenceCache()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` (2P, N, C) in the pair layout -> ``x + SAIM(x)``, same shape."""
        if _fast(self):
            return self._forward_folded(x)
        h = F.layer_norm(x, (x.shape[-1],), _cast(self.norm.weight, x), _cast(self.norm.bias, x), self.norm.eps)
        h = _linear(h, self.proj_in)
        q = _linear(h, self.q).unflatten(0, (-1, 2))  # (P, 2, N, W)
        k = _linear(h, self.k).unflatten(0, (-1, 2))
        v = _linear(h, self.v).unflatten(0, (-1, 2))
        k0, k1 = k[:, 0:1], k[:, 1:2]
        v0, v1 = v[:, 0:1], v[:, 1:2]
        # weight of token 0 for each query token: softmax over the two scores s_j = q.k_j / sqrt(W)
        w0 = torch.sigmoid((q * (k0 - k1)).sum(-1, keepdim=True) * (self.width**-0.5))
        mixed = (v1 + w0 * (v0 - v1)).flatten(0, 1)
        return x + _linear(mixed, self.proj_out)

    def _folded(self, dtype: torch.dtype) -> tuple[torch.Tensor | None, ...]:
        """Inference weights, everything linear between the LayerNorm and the softmax folded together.

        With ``n`` the plain normalised input (LayerNorm without affine), ``d = n0 - n1`` per pair and ``A``,
        ``c`` the affine maps from ``n`` to q and v (``proj_in`` and the LayerNorm affine folded in), the keys
        enter only through ``k0 - k1 = K d`` (biases cancel) and the score of row j is ``q_j . K d``.

        * Unless W is a narrow bottleneck (always with the default ``W = C``): the score is the bilinear form
          ``n_j . (A_q^T K d) + (K^T c_q) . d``, so one C -> C+1 matmul per pair replaces q and k, and
          ``proj_out`` (bias included) moves inside the mix ``v1 + w0 (v0 - v1)`` (affine, weights summing to
          1): returns ``(v_weight C x C, v_bias, score_weight (C+1) x C)``.
        * Else (C x C products would cost more than the bottleneck saves): ``proj_in`` (LayerNorm affine folded
          in) kept, q and v in one W -> 2W matmul, the key difference once per pair, ``proj_out`` kept: returns
          ``(in_weight, in_bias, qv_weight, qv_bias, k_weight, out_weight, out_bias)``.
        """

        def build() -> tuple[torch.Tensor | None, ...]:
            gamma, beta = _wide(self.norm.weight), _wide(self.norm.bias)
            w_in, b_in = _wide(self.proj_in.weight), _wide(self.proj_in.bias)
            # proj_in(gamma * n + beta) = (w_in * gamma) n + (w_in beta + b_in)
            w_in, b_in = w_in * gamma, w_in @ beta + b_in
            wq, wk, wv = (_wide(m.weight) for m in (self.q, self.k, self.v))
            bq, bv = _wide(self.q.bias), _wide(self.v.bias)
            wk = wk * self.width**-0.5  # the softmax scale 1/sqrt(W) folded in
            w_out, b_out = _wide(self.proj_out.weight), _wide(self.proj_out.bias)
            if _saim_bilinear(w_in.shape[1], self.width):
                k_weight = wk @ w_in
                q_weight, q_bias = wq @ w_in, wq @ b_in + bq
                score = torch.cat([q_weight.t() @ k_weight, (k_weight.t() @ q_bias).unsqueeze(0)])
                return w_out @ wv @ w_in, w_out @ (wv @ b_in + bv) + b_out, score
            return w_in, b_in, torch.cat([wq, wv]), torch.cat([bq, bv]), wk, w_out, b_out

        params = (self.norm.weight, self.norm.bias, self.proj_in.weight, self.proj_in.bias)
        for m in (self.q, self.k, self.v, self.proj_out):
            params += (m.weight, m.bias)
        return self._cache.get(_version_key(*params), dtype, build)

    def _forward_folded(self, x: torch.Tensor) -> torch.Tensor:
        """:meth:`forward` without gradients, with the :meth:`_folded` weights: two matmuls (one over every row,
        one over the per-pair differences) instead of five over every row; equal up to float rounding."""
        weights = self._folded(_compute_dtype(x))
        n = F.layer_norm(x, (x.shape[-1],), None, None, self.norm.eps)
        if len(weights) == 3:
            v_weight, v_bias, score_weight = weights
            pairs = n.unflatten(0, (-1, 2))  # (P, 2, N, C)
            per_pair = F.linear(pairs[:, 0] - pairs[:, 1], score_weight).unsqueeze(1)  # (P, 1, N, C + 1)
            v = F.linear(n, v_weight, v_bias).unflatten(0, (-1, 2))  # proj_out already applied
            channels = x.shape[-1]
            u = per_pair[..., :channels].to(pairs.dtype)
            score = torch.linalg.vecdot(pairs, u) + per_pair[..., channels].to(pairs.dtype)
        else:
            in_weight, in_bias, qv_weight, qv_bias, k_weight, out_weight, out_bias = weights
            h = F.linear(n, in_weight, in_bias)
            pairs = h.unflatten(0, (-1, 2))
            k_diff = F.linear(pairs[:, 0] - pairs[:, 1], k_weight).unsqueeze(1)  # (P, 1, N, W), scaled
            qv = F.linear(h, qv_weight, qv_bias).unflatten(0, (-1, 2))
            q, v = qv[..., : self.width], qv[..., self.width :]
            score = torch.linalg.vecdot(q, k_diff.to(q.dtype))
        # softmax over the two keys: token 0's weight is sigmoid(s0 - s1), the score difference above
        w0 = torch.sigmoid(score).unsqueeze(-1).to(v.dtype)
        mixed = torch.lerp(v[:, 1:2], v[:, 0:1], w0).flatten(0, 1)  # v1 + w0 (v0 - v1)
        if len(weights) != 3:
            mixed = F.linear(mixed, out_weight, out_bias)
        return x + mixed
