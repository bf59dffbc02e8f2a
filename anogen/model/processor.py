"""The dual attention processor on every UNet attention module, and the per-call state it reads."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

import torch
import torch.nn.functional as F
from torch import nn

from anogen.config import AdapterConfig
from anogen.model.bcm import BCM
from anogen.model.fast_path import _fast
from anogen.model.lora import BranchLoRA
from anogen.model.saim import SAIM

if TYPE_CHECKING:
    from diffusers.models.attention_processor import Attention

PROJECTIONS = ("to_q", "to_k", "to_v", "to_out")


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


# ---------------------------------------------------------------------------------------------- processor


class DualAttnProcessor(nn.Module):
    """Attention processor of the dual model; one per UNet ``Attention`` module.

    Computes what diffusers' ``AttnProcessor2_0`` computes, plus per-branch LoRA, SAIM and BCM (see the
    :mod:`anogen.model.dual` docstring). Every size comes from the ``Attention`` module it is built for.

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
