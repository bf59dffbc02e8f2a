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

Where the pieces live: :mod:`anogen.model.lora` (:class:`BranchLoRA`), :mod:`anogen.model.saim`,
:mod:`anogen.model.bcm`, :mod:`anogen.model.processor` (:class:`DualAttnProcessor`, :class:`DualState`),
:mod:`anogen.model.text_lora` (the text-encoder LoRA), :mod:`anogen.model.fast_path` (the no-grad cache) and
:mod:`anogen.model.layers` (dtype casts, seeded init); this module holds the adapter and the entry points.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from torch import nn

from anogen.config import AdapterConfig
from anogen.errors import CompatibilityError
from anogen.model.fast_path import _InferenceCache
from anogen.model.processor import DualAttnProcessor, DualState
from anogen.model.text_lora import _TE_ADAPTER_NAME, _text_encoder_with_lora

if TYPE_CHECKING:
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextModel

    from anogen.model.backbone import Backbone

logger = logging.getLogger(__name__)

BRANCHES = ("whole", "part")


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
