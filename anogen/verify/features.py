"""What the normal model sees: images through the backbone's own autoencoder.

Two operations, the same for the toy backbone on a CPU and SD-1.5 on a GPU (every size is read from the VAE):

- :func:`round_trip`: encode and decode, so that reference images carry the decoder's artefacts, like every
  generated image does;
- :func:`vae_features`: the outputs of chosen down blocks of the VAE *encoder*, taken with forward hooks (the
  encoder's own ``forward`` runs unchanged), resized to the finest of them and concatenated per cell.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np

from anogen.errors import InputError

if TYPE_CHECKING:
    import torch
    from diffusers import AutoencoderKL


def to_tensor(images: Sequence[np.ndarray] | np.ndarray, device: torch.device | str | None = None,
              dtype: torch.dtype | None = None) -> torch.Tensor:
    """HxWx3 uint8 RGB images -> an (N, 3, H, W) tensor in [-1, 1], the autoencoder's input range."""
    import torch

    array = np.stack([np.asarray(image) for image in images]) if not isinstance(images, np.ndarray) else images
    if array.ndim != 4 or array.shape[-1] != 3 or array.dtype != np.uint8:
        raise InputError(f"expected uint8 RGB images of shape (H, W, 3), got {array.dtype} {array.shape[1:]}")
    x = torch.from_numpy(np.ascontiguousarray(array)).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    return x.to(device=device, dtype=dtype or torch.float32)


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """An (N, 3, H, W) tensor in [-1, 1] -> HxWx3 uint8 RGB images, rounded as synth writes its PNGs."""
    import torch

    x = ((x.float().clamp(-1.0, 1.0) + 1.0) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).cpu().numpy()


def _vae_place(vae: AutoencoderKL) -> tuple[torch.device, torch.dtype]:
    parameter = next(vae.parameters())
    return parameter.device, parameter.dtype


def round_trip(vae: AutoencoderKL, images: Sequence[np.ndarray], batch_size: int = 8) -> list[np.ndarray]:
    """Encode (the posterior's mode, as synth encodes references) and decode each image; uint8 in, uint8 out.

    The result is rounded to uint8 like a PNG that synth writes, so a reference goes through exactly what a
    generated image goes through after the UNet.
    """
    import torch

    device, dtype = _vae_place(vae)
    out: list[np.ndarray] = []
    with torch.no_grad():
        for start in range(0, len(images), batch_size):
            x = to_tensor(images[start : start + batch_size], device=device, dtype=dtype)
            z = vae.encode(x).latent_dist.mode()
            out.extend(to_uint8(vae.decode(z, return_dict=False)[0]))
    return out


def resolve_blocks(vae: AutoencoderKL, blocks: Sequence[int]) -> list[int]:
    """Negative block indices -> positive ones; an index the encoder does not have is an error."""
    count = len(vae.encoder.down_blocks)
    resolved = []
    for block in blocks:
        index = block + count if block < 0 else block
        if not 0 <= index < count:
            raise InputError(f"verify feature block {block} does not exist: this VAE encoder has {count} down blocks")
        resolved.append(index)
    return sorted(set(resolved))


def vae_features(vae: AutoencoderKL, images: Sequence[np.ndarray], blocks: Sequence[int], pool: int = 1,
                 batch_size: int = 8) -> torch.Tensor:
    """Mid-level features of the VAE encoder, one vector per cell of the finest chosen block's grid.

    Args:
        vae (`AutoencoderKL`): the backbone's autoencoder (its device and dtype are used).
        images: HxWx3 uint8 RGB images, all of one size.
        blocks: down block indices of the encoder (see :func:`resolve_blocks`).
        pool (`int`, defaults to 1): odd side of a local average over cells (PatchCore's neighbourhood).
        batch_size (`int`, defaults to 8): images per forward pass.

    Returns:
        `torch.Tensor`: float32 features of shape (N, C, h, w) on the VAE's device, C the sum of the blocks' widths.
    """
    import torch
    import torch.nn.functional as F

    device, dtype = _vae_place(vae)
    indices = resolve_blocks(vae, blocks)
    captured: dict[int, torch.Tensor] = {}

    def keep(index: int) -> Callable[[object, object, torch.Tensor], None]:
        def hook(module: object, args: object, output: torch.Tensor) -> None:
            captured[index] = output

        return hook

    handles = [vae.encoder.down_blocks[i].register_forward_hook(keep(i)) for i in indices]
    batches = []
    try:
        with torch.no_grad():
            for start in range(0, len(images), batch_size):
                x = to_tensor(images[start : start + batch_size], device=device, dtype=dtype)
                captured.clear()
                # The whole encoder runs (its last blocks and the mid block are wasted work); calling the blocks
                # ourselves would copy diffusers' Encoder.forward, which hooks leave untouched.
                vae.encoder(x)
                maps = [captured[i].float() for i in indices]
                side = max(m.shape[-2:] for m in maps)
                parts = []
                for m in maps:
                    if pool > 1:
                        m = F.avg_pool2d(m, pool, stride=1, padding=pool // 2, count_include_pad=False)
                    if tuple(m.shape[-2:]) != tuple(side):
                        m = F.interpolate(m, size=tuple(side), mode="bilinear", align_corners=False)
                    parts.append(m)
                batches.append(torch.cat(parts, dim=1))
    finally:
        for handle in handles:
            handle.remove()
    return torch.cat(batches)
