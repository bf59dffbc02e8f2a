"""Configs of the small offline backbones: the random ``tiny`` one, and the CLIP text encoder shape it shares
with ``toy``.

No torch, and no import of :mod:`anogen.model.backbone`: :mod:`anogen.model.spec` describes ``tiny`` from these
without building it, and the backbone builds it from them.
"""

from __future__ import annotations

from typing import Any

from anogen.model.tokenizer import vocab_size


def small_text_encoder_config(hidden_size: int) -> dict[str, Any]:
    """The ``CLIPTextModel`` config of the small offline backbones (``tiny``, ``toy``): two layers of four heads,
    an MLP twice ``hidden_size`` wide, and the vocabulary and special tokens of the character tokenizer
    (:mod:`anogen.model.tokenizer`, whose 32-token prompts fit the 32 positions).

    The tiny and toy text encoders are built from this with fixed seeds, so a changed value changes their weights.
    """
    return dict(
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_attention_heads=4,
        num_hidden_layers=2,
        vocab_size=vocab_size(),
        max_position_embeddings=32,
        bos_token_id=vocab_size() - 2,
        eos_token_id=vocab_size() - 1,
        pad_token_id=vocab_size() - 1,
    )


def tiny_configs(resolution: int = 32) -> dict[str, dict[str, Any]]:
    """Configs of the random ``tiny`` backbone: SD-1.x classes, a 2x autoencoder, ~1M-parameter UNet."""
    vae_factor = 2
    return {
        "unet": dict(
            sample_size=resolution // vae_factor,
            in_channels=4,
            out_channels=4,
            block_out_channels=(32, 64),
            layers_per_block=1,
            down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
            cross_attention_dim=32,
            attention_head_dim=8,
            norm_num_groups=8,
        ),
        "vae": dict(
            sample_size=resolution,
            in_channels=3,
            out_channels=3,
            latent_channels=4,
            block_out_channels=(16, 32),
            down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
            up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
            layers_per_block=1,
            norm_num_groups=8,
            scaling_factor=1.0,
        ),
        "text_encoder": small_text_encoder_config(hidden_size=32),
        "scheduler": dict(
            num_train_timesteps=1000,
            beta_start=0.00085,
            beta_end=0.012,
            beta_schedule="scaled_linear",
            clip_sample=False,
            set_alpha_to_one=False,
            steps_offset=1,
            skip_prk_steps=True,
            prediction_type="epsilon",
        ),
    }
