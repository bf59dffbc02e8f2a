"""The text-encoder LoRA shared by both branches: a peft LoRA on a weight-sharing copy of the text encoder."""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from transformers import CLIPTextModel

TEXT_ENCODER_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj")
_TE_ADAPTER_NAME = "anogen"


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
