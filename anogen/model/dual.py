"""The dual-interrelated model: per-branch LoRA, SAIM coupling and BCM, as diffusers attention processors.

Batch layout (every call of a dual UNet): the batch holds **pairs**. Row ``2k`` is branch 0 (the whole
anomalous image) of pair ``k``, row ``2k + 1`` branch 1 (the anomaly part alone on grey). With classifier-free
guidance the batch is ``[uncond pairs..., cond pairs...]``, so rows still alternate whole/part and every
unconditional whole image is coupled to its own unconditional part. Processors view ``(2P, N, C)`` as
``(P, 2, N, C)`` without copying.

One :class:`DualAttnProcessor` sits on every attention module of the UNet (self-attention ``attn1`` and
cross-attention ``attn2``). It computes the stock diffusers attention (``F.scaled_dot_product_attention``) with

* a LoRA per branch on ``to_q``, ``to_k``, ``to_v`` and ``to_out[0]`` (down ~ N(0, 1/r) from a seeded generator,
  up = 0, scale alpha / r);
* :class:`SAIM` after the module's output (LayerNorm -> Linear C->W -> single-head attention over the two branch
  tokens of each spatial position -> Linear W->C, zero-initialised unless ``saim_init == "default"`` -> residual),
  unless ``coupling == "none"``;
* :class:`BCM` on ``attn1`` when ``AdapterConfig.bcm``: a reference pass over the noised background latents
  (``DualState(mode="record")``: whole-branch LoRA on every row, no SAIM) stores each ``attn1`` input; in the
  main pass branch 0's ``attn1`` reads keys/values from ``(1 - a) * h + a * MLP(h_ref)`` (MLP: Linear C->H ->
  Linear H->C, H = ``bcm_width`` or C).

A fresh adapter (LoRA up-projections, SAIM out-projections and BCM gates all zero) reproduces the base model;
with ``saim_init == "default"`` (the reference implementation's init) SAIM acts from the first step.

Sampling (gradients disabled) takes a fast path that equals the plain one up to float rounding: each projection
uses per-branch merged weights ``W_b = W + scale * up_b @ down_b`` (one matmul per branch, the stock FLOPs), SAIM
folds its LayerNorm affine, ``proj_in``, q/k/v and ``proj_out`` into two matmuls (the keys enter only through
``k0 - k1``, computed once per pair), BCM folds ``fc1`` into ``fc2``. The folded weights are cached on the modules
(not in ``state_dict``) and rebuilt whenever a weight changes; training (gradients enabled) always computes with
the unmerged weights. :meth:`DualAdapter.set_fast_inference` switches the fast path off.
The processors are ``nn.Module`` s; once installed, diffusers registers them as submodules of the UNet, so cast
the UNet (``unet.to(torch.float16)``) *before* :meth:`DualAdapter.install`, or the adapter's fp32 weights are
cast with it.
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from anogen.config import AdapterConfig
from anogen.errors import CompatibilityError

if TYPE_CHECKING:
    from diffusers import UNet2DConditionModel
    from diffusers.models.attention_processor import Attention
    from transformers import CLIPTextModel

    from anogen.model.backbone import Backbone

logger = logging.getLogger(__name__)

BRANCHES = ("whole", "part")
PROJECTIONS = ("to_q", "to_k", "to_v", "to_out")
TEXT_ENCODER_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj")
_TE_ADAPTER_NAME = "anogen"


@dataclass
class DualState:
    """Per-call state of the dual processors, passed as ``unet(..., cross_attention_kwargs={"dual_state": s})``.

    Explicit rather than global, so that two UNets (or two calls) never share hidden state.

    Args:
        mode (`str`, defaults to `"main"`): ``"main"`` is the dual pass over ``(2P, ...)`` pairs; ``"record"``
            is BCM's reference pass over ``(P, ...)`` background latents: every row uses the whole-branch LoRA,
            no SAIM, and each ``attn1`` stores its input in ``references``.
        references (`dict[str, torch.Tensor]`): attention-module name (``down_blocks.0. ... .attn1``) ->
            that module's input ``(P, N, C)`` in the reference pass; read by the main pass.
    """

    mode: Literal["main", "record"] = "main"
    references: dict[str, torch.Tensor] = field(default_factory=dict)


# ------------------------------------------------------------------------------------------------ helpers


def _cast(weight: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor | None:
    """The adapter keeps fp32 weights; a half-precision UNet without autocast needs them in its dtype."""
    if weight is None or weight.dtype == like.dtype:
        return weight
    return weight.to(like.dtype)


def _linear(x: torch.Tensor, layer: nn.Linear) -> torch.Tensor:
    return F.linear(x, _cast(layer.weight, x), _cast(layer.bias, x))


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


# ---------------------------------------------------------------------------------------------- processor


class DualAttnProcessor(nn.Module):
    """Attention processor of the dual model; one per UNet ``Attention`` module.

    Computes what diffusers' ``AttnProcessor2_0`` computes, plus per-branch LoRA, SAIM and BCM (see the module
    docstring). Every size comes from the ``Attention`` module it is built for.

    Args:
        layer (`str`): the attention module's name in the UNet (``...transformer_blocks.0.attn1``); the key
            of its BCM reference in :class:`DualState`.
        attn (`Attention`): the module, read for its sizes only.
        config (`AdapterConfig`): rank, alpha, coupling, saim_width, bcm.
        generator (`torch.Generator`): seeds every random initialisation.
    """

    def __init__(self, layer: str, attn: Attention, config: AdapterConfig, generator: torch.Generator):
        super().__init__()
        self.layer = layer
        self.is_self_attention = not bool(getattr(attn, "is_cross_attention", False))
        sizes = {
            "to_q": (attn.to_q.in_features, attn.to_q.out_features),
            "to_k": (attn.to_k.in_features, attn.to_k.out_features),
            "to_v": (attn.to_v.in_features, attn.to_v.out_features),
            "to_out": (attn.to_out[0].in_features, attn.to_out[0].out_features),
        }
        self.lora: nn.ModuleDict | None = None
        if config.rank > 0:
            alpha = config.alpha if config.alpha is not None else float(config.rank)
            self.lora = nn.ModuleDict(
                {name: BranchLoRA(i, o, config.rank, alpha / config.rank, generator) for name, (i, o) in sizes.items()}
            )
        channels = attn.to_out[0].out_features
        self.saim = (
            SAIM(channels, config.saim_width or channels, generator, zero_out=config.saim_init == "zero")
            if config.coupling == "saim"
            else None
        )
        self.bcm = (
            BCM(attn.to_q.in_features, generator, config.bcm_width)
            if (config.bcm and self.is_self_attention)
            else None
        )

    def _project(self, name: str, base: nn.Module, x: torch.Tensor, mode: str) -> torch.Tensor:
        if self.lora is None:
            return base(x)
        lora: BranchLoRA = self.lora[name]  # type: ignore[assignment]
        if _fast(lora) and type(base) is nn.Linear:
            return lora.project_merged(base, x, mode)
        return base(x) + lora.delta(x, mode)

    def __call__(  # type: ignore[override]  # diffusers inspects this signature for the kwargs it forwards
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        dual_state: DualState | None = None,
    ) -> torch.Tensor:
        """One attention module of the dual UNet.

        Args:
            attn (`Attention`): the module calling us.
            hidden_states (`torch.Tensor` of shape `(2P, N, C)` or `(2P, C, H, W)`): pairs in the batch layout
                (``(P, ...)`` background rows in ``record`` mode).
            encoder_hidden_states (`torch.Tensor` of shape `(B, L, D)`, *optional*): text states (cross-attention).
            attention_mask, temb: as in diffusers.
            dual_state (`DualState`, *optional*): ``None`` is a main pass without BCM references.
        """
        mode = dual_state.mode if dual_state is not None else "main"
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch_size, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch_size, channel, height * width).transpose(1, 2)
        batch_size = hidden_states.shape[0]
        if mode == "main" and batch_size % 2:
            raise ValueError(f"dual UNet batch of {batch_size} rows: expected (whole, part) pairs, an even count")
        sequence_length = (hidden_states if encoder_hidden_states is None else encoder_hidden_states).shape[1]
        if attention_mask is not None:
            attention_mask = attn.prepare_attention_mask(attention_mask, sequence_length, batch_size)
            attention_mask = attention_mask.view(batch_size, attn.heads, -1, attention_mask.shape[-1])
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)

        query = self._project("to_q", attn.to_q, hidden_states, mode)
        if encoder_hidden_states is None:
            kv_input = hidden_states
            if self.bcm is not None and dual_state is not None:
                if mode == "record":
                    dual_state.references[self.layer] = hidden_states
                elif self.layer in dual_state.references:
                    kv_input = self.bcm.mix(hidden_states, dual_state.references[self.layer])
        else:
            kv_input = encoder_hidden_states
            if attn.norm_cross:
                kv_input = attn.norm_encoder_hidden_states(kv_input)
        key = self._project("to_k", attn.to_k, kv_input, mode)
        value = self._project("to_v", attn.to_v, kv_input, mode)

        head_dim = key.shape[-1] // attn.heads
        query = query.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        key = key.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        value = value.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)
        hidden_states = F.scaled_dot_product_attention(
            query, key, value, attn_mask=attention_mask, dropout_p=0.0, is_causal=False
        )
        hidden_states = hidden_states.transpose(1, 2).reshape(batch_size, -1, attn.heads * head_dim)
        hidden_states = hidden_states.to(query.dtype)
        hidden_states = self._project("to_out", attn.to_out[0], hidden_states, mode)
        hidden_states = attn.to_out[1](hidden_states)

        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(batch_size, channel, height, width)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        hidden_states = hidden_states / attn.rescale_output_factor

        if self.saim is not None and mode == "main":
            if hidden_states.ndim == 4:
                flat = hidden_states.flatten(2).transpose(1, 2)
                hidden_states = self.saim(flat).transpose(1, 2).reshape(hidden_states.shape)
            else:
                hidden_states = self.saim(hidden_states)
        return hidden_states


# ------------------------------------------------------------------------------------------------ adapter


def _module_key(layer: str) -> str:
    """``nn.ModuleDict`` keys cannot hold dots; layer names always do."""
    return layer.replace(".", "__")


class DualAdapter(nn.Module):
    """Every trainable weight of one dual adapter: a :class:`DualAttnProcessor` per UNet attention module and,
    optionally, a LoRA on the text encoder shared by both branches.

    Build one with :meth:`from_unet` (or :meth:`from_backbone`), then :meth:`install` it on the UNet.

    Attributes:
        config (`AdapterConfig`): what the adapter was built with.
        layers (`list[str]`): attention-module names, in the UNet's order.
        processors (`nn.ModuleDict`): one processor per layer (keys are the names with ``.`` -> ``__``).
        text_encoder (`CLIPTextModel`, *optional*): when ``config.text_encoder_lora``, a structural copy of the
            backbone's text encoder that *shares* its frozen weights and carries the peft LoRA; not a registered
            submodule (so the adapter's parameters are its own weights only).
        text_encoder_lora (`nn.ModuleDict`): the peft ``lora_A`` / ``lora_B`` modules of that copy, by module path.
        backbone_source, backbone_hash (`str`, *optional*): identity of the backbone it was built for.
    """

    def __init__(
        self,
        config: AdapterConfig,
        processors: dict[str, DualAttnProcessor],
        text_encoder: CLIPTextModel | None = None,
    ):
        super().__init__()
        self.config = config
        self.layers = list(processors)
        self.processors = nn.ModuleDict({_module_key(name): proc for name, proc in processors.items()})
        object.__setattr__(self, "text_encoder", text_encoder)  # deliberately not a submodule (see class doc)
        self.text_encoder_lora = nn.ModuleDict()
        if text_encoder is not None:
            from peft.tuners.lora import LoraLayer

            for path, module in text_encoder.named_modules():
                if isinstance(module, LoraLayer) and _TE_ADAPTER_NAME in module.lora_A:
                    self.text_encoder_lora[_module_key(path)] = nn.ModuleDict(
                        {"lora_A": module.lora_A[_TE_ADAPTER_NAME], "lora_B": module.lora_B[_TE_ADAPTER_NAME]}
                    )
        self.backbone_source: str | None = None
        self.backbone_hash: str | None = None
        self._installed_on: set[int] = set()

    @classmethod
    def from_unet(
        cls,
        unet: UNet2DConditionModel,
        config: AdapterConfig,
        *,
        text_encoder: CLIPTextModel | None = None,
        seed: int = 0,
    ) -> DualAdapter:
        """A fresh adapter sized from ``unet``'s attention modules; it reproduces the base model exactly.

        Args:
            unet (`UNet2DConditionModel`): the frozen backbone UNet; nothing in it is changed.
            config (`AdapterConfig`): rank, alpha, coupling, saim_width, bcm, text-encoder LoRA.
            text_encoder (`CLIPTextModel`, *optional*): required when ``config.text_encoder_lora``.
            seed (`int`, defaults to 0): seeds every random initialisation (the global RNG is not touched).
        """
        if config.rank < 0:
            raise ValueError(f"LoRA rank must be >= 0, got {config.rank}")
        if config.coupling not in ("saim", "none"):
            raise ValueError(f"coupling must be 'saim' or 'none', got {config.coupling!r}")
        if config.saim_init not in ("zero", "default"):
            raise ValueError(f"saim_init must be 'zero' or 'default', got {config.saim_init!r}")
        for name in ("saim_width", "bcm_width"):
            width = getattr(config, name)
            if width is not None and width < 1:
                raise ValueError(f"{name} must be >= 1 (or None for the module's width), got {width}")
        generator = torch.Generator().manual_seed(seed)
        modules = dict(unet.named_modules())
        processors = {}
        for name in unet.attn_processors:
            layer = name.removesuffix(".processor")
            processors[layer] = DualAttnProcessor(layer, modules[layer], config, generator)
        text_encoder_copy = None
        if config.text_encoder_lora:
            if text_encoder is None:
                raise ValueError("config.text_encoder_lora needs the backbone's text_encoder")
            text_encoder_copy = _text_encoder_with_lora(text_encoder, config.text_encoder_rank, generator)
        adapter = cls(config, processors, text_encoder_copy)
        device = next(unet.parameters()).device
        if device.type != "cpu":
            adapter.to(device)
        return adapter

    @classmethod
    def from_backbone(cls, backbone: Backbone, config: AdapterConfig, *, seed: int = 0) -> DualAdapter:
        """:meth:`from_unet` on a :class:`~anogen.model.backbone.Backbone`, recording its identity."""
        adapter = cls.from_unet(backbone.unet, config, text_encoder=backbone.text_encoder, seed=seed)
        adapter.backbone_source = backbone.source
        adapter.backbone_hash = backbone.content_hash
        return adapter

    def processor(self, layer: str) -> DualAttnProcessor:
        """The processor of attention module ``layer`` (e.g. ``mid_block.attentions.0.transformer_blocks.0.attn1``)."""
        return self.processors[_module_key(layer)]  # type: ignore[return-value]

    def install(self, unet: UNet2DConditionModel) -> None:
        """Put this adapter's processors on ``unet``; afterwards ``unet(...)`` is the dual UNet."""
        names = list(unet.attn_processors)
        layers = [n.removesuffix(".processor") for n in names]
        if sorted(layers) != sorted(self.layers):
            raise CompatibilityError(
                f"this adapter has {len(self.layers)} attention modules and the UNet {len(layers)} with other names; "
                "it was made for another UNet architecture"
            )
        # set_attn_processor empties the dict it is given, hence a fresh one
        unet.set_attn_processor({name: self.processor(layer) for name, layer in zip(names, layers, strict=True)})
        self._installed_on.add(id(getattr(unet, "_orig_mod", unet)))

    def uninstall(self, unet: UNet2DConditionModel) -> None:
        """Restore the stock processors (``AttnProcessor2_0``) on ``unet``."""
        from diffusers.models.attention_processor import AttnProcessor2_0

        unet.set_attn_processor(AttnProcessor2_0())
        self._installed_on.discard(id(getattr(unet, "_orig_mod", unet)))

    def is_installed(self, unet: UNet2DConditionModel) -> bool:
        """Whether :meth:`install` put this adapter on ``unet`` (or on the module a ``torch.compile`` wraps)."""
        return id(getattr(unet, "_orig_mod", unet)) in self._installed_on

    def set_fast_inference(self, enabled: bool = True) -> None:
        """Switch the no-grad fast path (merged per-branch LoRA, folded SAIM and BCM weights) on or off.

        On by default. It only ever applies while gradients are disabled (``torch.no_grad()``, as in sampling)
        and equals the plain path up to float rounding; off, every call computes with the unmerged weights.
        """
        for module in self.modules():
            if hasattr(module, "fast_inference"):
                module.fast_inference = enabled
        if not enabled:
            self.clear_inference_cache()

    def clear_inference_cache(self) -> None:
        """Free the precomputed inference weights (two merged copies of every LoRA'd projection); they are
        rebuilt on the next no-grad call. They are also rebuilt by themselves whenever a weight changes."""
        for module in self.modules():
            cache = getattr(module, "_cache", None)
            if isinstance(cache, _InferenceCache):
                cache.clear()

    def forward(
        self,
        unet: UNet2DConditionModel,
        latents: torch.Tensor,
        timesteps: torch.Tensor | float | int,
        encoder_hidden_states: torch.Tensor,
        background_latents: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """:func:`dual_forward` with this adapter, so that a ``DistributedDataParallel``-wrapped adapter (what
        ``accelerator.prepare(adapter)`` returns) synchronises its gradients: call the wrapper, not dual_forward."""
        return dual_forward(
            unet, self, latents, timesteps, encoder_hidden_states, background_latents=background_latents
        )

    def trainable_parameters(self) -> list[nn.Parameter]:
        """Every weight of the adapter (fp32), text-encoder LoRA included: all of them are trained.

        Raises:
            ValueError: some weight was frozen, typically by ``unet.requires_grad_(False)`` *after* ``install``
                (installed processors are submodules of the UNet); freeze the UNet before installing.
        """
        params = list(self.parameters())
        frozen = [name for name, p in self.named_parameters() if not p.requires_grad]
        if frozen:
            raise ValueError(
                f"{len(frozen)} adapter weights are frozen (e.g. {frozen[0]}): freeze the UNet before install(), "
                "or call adapter.requires_grad_(True)"
            )
        return params

    def num_trainable(self) -> int:
        """The number of adapter weights (all trainable)."""
        return sum(p.numel() for p in self.parameters())

    # -- the stable key scheme of adapter.safetensors (documented in docs/method.md)

    def adapter_state_dict(self) -> dict[str, torch.Tensor]:
        """Every weight under its stable file key (see docs/method.md, "Adapter files").

        ``unet.<layer>.lora.<proj>.<whole|part>.<down|up>``, ``unet.<layer>.saim.<norm|proj_in|q|k|v|proj_out>.
        <weight|bias>``, ``unet.<layer>.bcm.<fc1|fc2>.<weight|bias>``, ``unet.<layer>.bcm.alpha``,
        ``text_encoder.<module path>.<lora_A|lora_B>.weight``.
        """
        state: dict[str, torch.Tensor] = {}
        for layer in self.layers:
            for key, tensor in self.processor(layer).state_dict().items():
                parts = key.split(".")
                if parts[0] == "lora":  # lora.<proj>.<down|up> holds both branches on axis 0
                    for b, branch in enumerate(BRANCHES):
                        state[f"unet.{layer}.lora.{parts[1]}.{branch}.{parts[2]}"] = tensor[b]
                else:
                    state[f"unet.{layer}.{key}"] = tensor
        for key, tensor in self.text_encoder_lora.state_dict().items():
            module_path, rest = key.split(".", 1)
            state[f"text_encoder.{module_path.replace('__', '.')}.{rest}"] = tensor
        return {k: v.detach().contiguous() for k, v in state.items()}

    def load_adapter_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Copy weights saved by :meth:`adapter_state_dict`; every key must match (else CompatibilityError)."""
        own = self.adapter_state_dict()
        missing = sorted(set(own) - set(state))
        unexpected = sorted(set(state) - set(own))
        if missing or unexpected:
            detail = f"missing {missing[:3]}" if missing else f"unexpected {unexpected[:3]}"
            raise CompatibilityError(f"adapter weights do not match this adapter's layout ({detail})")
        for key, tensor in own.items():
            if state[key].shape != tensor.shape:
                raise CompatibilityError(
                    f"adapter weight {key} has shape {tuple(state[key].shape)}, expected {tuple(tensor.shape)}"
                )
        with torch.no_grad():
            for layer in self.layers:
                proc = self.processor(layer)
                for key, param in proc.state_dict(keep_vars=True).items():
                    parts = key.split(".")
                    if parts[0] == "lora":
                        for b, branch in enumerate(BRANCHES):
                            param[b].copy_(state[f"unet.{layer}.lora.{parts[1]}.{branch}.{parts[2]}"])
                    else:
                        param.copy_(state[f"unet.{layer}.{key}"])
            for key, param in self.text_encoder_lora.state_dict(keep_vars=True).items():
                module_path, rest = key.split(".", 1)
                param.copy_(state[f"text_encoder.{module_path.replace('__', '.')}.{rest}"])


def _text_encoder_with_lora(text_encoder: CLIPTextModel, rank: int, generator: torch.Generator) -> CLIPTextModel:
    """A copy of ``text_encoder`` that shares its (frozen) weights and carries a peft LoRA.

    Copying the module tree but not the tensors leaves the backbone's text encoder untouched (other adapters
    and plain encodes keep using it) at no memory cost.
    """
    from peft import LoraConfig, inject_adapter_in_model

    memo: dict[int, Any] = {id(t): t for t in (*text_encoder.parameters(), *text_encoder.buffers())}
    clone = copy.deepcopy(text_encoder, memo)
    lora_config = LoraConfig(r=rank, lora_alpha=rank, target_modules=list(TEXT_ENCODER_TARGETS), lora_dropout=0.0)
    # peft initialises lora_A from the global RNG; keep that state unchanged and re-draw from our generator below
    with torch.random.fork_rng(devices=[]):
        inject_adapter_in_model(lora_config, clone, adapter_name=_TE_ADAPTER_NAME)
    from peft.tuners.lora import LoraLayer

    with torch.no_grad():
        for module in clone.modules():
            if isinstance(module, LoraLayer) and _TE_ADAPTER_NAME in module.lora_A:
                # peft creates the LoRA in the base layer's dtype; a half-precision backbone (mixed-precision fit)
                # would then train it in fp16 (GradScaler refuses to unscale fp16 gradients) or bf16: keep fp32
                module.lora_A[_TE_ADAPTER_NAME].float()
                module.lora_B[_TE_ADAPTER_NAME].float()
                down = module.lora_A[_TE_ADAPTER_NAME].weight
                down.copy_(torch.empty(down.shape).normal_(0.0, 1.0 / rank, generator=generator))
                module.lora_B[_TE_ADAPTER_NAME].weight.zero_()
    for name, param in clone.named_parameters():
        param.requires_grad_("lora_" in name)
    return clone


# -------------------------------------------------------------------------------------------- entry points


def encode_prompts(backbone: Backbone, prompts: Sequence[str], adapter: DualAdapter | None = None) -> torch.Tensor:
    """Text embeddings of ``prompts``, through the adapter's shared text-encoder LoRA when it has one.

    Args:
        backbone (`Backbone`): tokenizer and (frozen) text encoder.
        prompts (`Sequence[str]`): one prompt per UNet row (e.g. ``[whole, part] * P``).
        adapter (`DualAdapter`, *optional*): with ``config.text_encoder_lora``, its LoRA'd text encoder is used
            and gradients flow to it; otherwise the encoding runs without gradients.

    Returns:
        `torch.Tensor` of shape `(len(prompts), L, D)`: the last hidden state (what SD-1.x conditions on).
    """
    tokenizer = backbone.tokenizer
    tokens = tokenizer(
        list(prompts),
        padding="max_length",
        max_length=tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    )
    encoder = adapter.text_encoder if adapter is not None and adapter.text_encoder is not None else None
    if encoder is None:
        encoder = backbone.text_encoder
        device = next(encoder.parameters()).device
        with torch.no_grad():
            return encoder(tokens.input_ids.to(device))[0]
    device = next(encoder.parameters()).device
    return encoder(tokens.input_ids.to(device))[0]


def dual_forward(
    unet: UNet2DConditionModel,
    adapter: DualAdapter,
    latents: torch.Tensor,
    timesteps: torch.Tensor | float | int,
    encoder_hidden_states: torch.Tensor,
    *,
    background_latents: torch.Tensor | None = None,
) -> torch.Tensor:
    """The dual UNet's noise prediction for a batch of (whole, part) pairs.

    Args:
        unet (`UNet2DConditionModel`): with ``adapter`` installed.
        adapter (`DualAdapter`): its config decides whether BCM runs.
        latents (`torch.Tensor` of shape `(2P, C, h, w)`): pairs, row 2k whole and 2k+1 part.
        timesteps (`torch.Tensor` of shape `(2P,)`, or a scalar): both rows of a pair share t.
        encoder_hidden_states (`torch.Tensor` of shape `(2P, L, D)`): per-row text states.
        background_latents (`torch.Tensor` of shape `(P, C, h, w)`, *optional*): the background of each pair,
            already noised to that pair's t; required iff ``adapter.config.bcm``.

    Returns:
        `torch.Tensor` of shape `(2P, C, h, w)`.
    """
    if not adapter.is_installed(unet):
        raise ValueError("the adapter is not installed on this UNet: call adapter.install(unet) first")
    if latents.shape[0] % 2:
        raise ValueError(f"latents hold {latents.shape[0]} rows: expected (whole, part) pairs, an even count")
    state = DualState()
    if adapter.config.bcm:
        pairs = latents.shape[0] // 2
        if background_latents is None or background_latents.shape[0] != pairs:
            got = None if background_latents is None else background_latents.shape[0]
            raise ValueError(f"BCM needs background_latents with one row per pair ({pairs}), got {got}")
        ref_t = timesteps[0::2] if isinstance(timesteps, torch.Tensor) and timesteps.ndim > 0 else timesteps
        record = DualState(mode="record")
        unet(
            background_latents,
            ref_t,
            encoder_hidden_states[0::2],
            cross_attention_kwargs={"dual_state": record},
            return_dict=False,
        )
        state.references = record.references
    elif background_latents is not None:
        raise ValueError("background_latents given but the adapter has no BCM (config.bcm is false)")
    return unet(
        latents, timesteps, encoder_hidden_states, cross_attention_kwargs={"dual_state": state}, return_dict=False
    )[0]
