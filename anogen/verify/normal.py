"""The normal model of a category: how unlike every normal image each location of an image looks.

A PatchCore-style memory bank over mid-level features of the backbone's own VAE encoder
(:mod:`anogen.verify.features`), built from the category's ``train/good`` images *after a VAE round trip*, so that
the decoder's artefacts, which every generated image carries, are normal to it. A seeded part of the normals is
held out of the bank; their scores calibrate the map into *normal units* (1.0 = the ``scale_quantile`` quantile of
the held-out normals' per-image maxima), which is what lets one threshold serve the toy backbone and SD-1.5.

Nothing is downloaded and nothing depends on the backbone's size: the toy backbone on a CPU and SD-1.5 at 512 px
on a GPU run the same code.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from anogen.errors import InputError
from anogen.progress import ProgressCallback, report
from anogen.seeding import derive_seed
from anogen.verify.config import VerifyConfig

if TYPE_CHECKING:
    import torch

    from anogen.model.backbone import Backbone


def array_sha256(image: np.ndarray) -> str:
    """sha256 of an image array's shape, dtype and bytes (for in-memory inputs without a file)."""
    digest = hashlib.sha256(f"{image.shape}|{image.dtype}".encode())
    digest.update(np.ascontiguousarray(image).tobytes())
    return digest.hexdigest()


@dataclass
class NormalModel:
    """A built normal model.

    Attributes:
        bank (`torch.Tensor`): (B, C) float32 feature vectors of round-tripped normals (the coreset).
        holdout_max (`torch.Tensor`): (K,) float32, sorted: the highest raw score of each held-out normal.
        config (`VerifyConfig`): the configuration it was built with.
        blocks (`list[int]`): the encoder blocks the features come from (non-negative indices).
        resolution (`int`): image side the model expects (images are the synth output's size).
        stride (`int`): pixels per feature cell (the anomaly map's own resolution).
        position_scale (`float`): what the cells' coordinates are multiplied by before they join the features.
        backbone_hash (`str`): the backbone's content hash (a model is only valid with its own VAE).
        inputs (`list[dict]`): per normal image, ``name`` and ``sha256``, in the order given.
        holdout_names (`list[str]`): names of the held-out normals.
        vae: the autoencoder used for features (not saved; set when built or loaded).
    """

    bank: torch.Tensor
    holdout_max: torch.Tensor
    config: VerifyConfig
    blocks: list[int]
    resolution: int
    stride: int
    position_scale: float
    backbone_hash: str
    inputs: list[dict[str, str]]
    holdout_names: list[str]
    vae: Any = field(default=None, repr=False)

    @property
    def scale(self) -> float:
        """The raw score that is 1.0 in normal units."""
        values = self.holdout_max.double().numpy()
        return float(max(np.quantile(values, self.config.scale_quantile), 1e-12))

    def raw_maps(self, images: Sequence[np.ndarray], *, round_trip: bool = False) -> np.ndarray:
        """Raw anomaly maps (distance to the nearest bank vector, smoothed, at image size): (N, H, W) float32.

        Args:
            images: HxWx3 uint8 RGB images at ``resolution``.
            round_trip (`bool`, defaults to False): pass the images through the VAE first (for real images that
                should be judged as a generated image would be; generated images are decoder outputs already).
        """
        import torch
        import torch.nn.functional as F

        from anogen.verify.features import round_trip as vae_round_trip
        from anogen.verify.features import vae_features

        if self.vae is None:
            raise InputError("this normal model has no VAE attached: load it with its backbone")
        images = [np.asarray(image) for image in images]
        for image in images:
            if image.shape != (self.resolution, self.resolution, 3):
                raise InputError(
                    f"the normal model expects {self.resolution}x{self.resolution} RGB images, got {image.shape}"
                )
        if round_trip:
            images = vae_round_trip(self.vae, images, self.config.batch_size)
        maps = []
        bank = self.bank.to(next(self.vae.parameters()).device)
        for start in range(0, len(images), self.config.batch_size):
            features = vae_features(self.vae, images[start : start + self.config.batch_size], self.blocks,
                                    self.config.feature_pool, self.config.batch_size)
            n, _, h, w = features.shape
            cells = with_positions(features, self.position_scale)
            distance = torch.cat([torch.cdist(part, bank).min(dim=1).values for part in cells.split(8192)])
            grid = _blur(distance.reshape(n, 1, h, w), self.config.blur_sigma)
            full = F.interpolate(grid, size=(self.resolution, self.resolution), mode="bilinear", align_corners=False)
            maps.append(full[:, 0].float().cpu().numpy())
        return np.concatenate(maps).astype(np.float32) if maps else np.zeros((0, self.resolution, self.resolution),
                                                                              np.float32)

    def anomaly_maps(self, images: Sequence[np.ndarray], *, round_trip: bool = False) -> np.ndarray:
        """Anomaly maps in normal units (1.0 = a high score for a held-out normal): (N, H, W) float32."""
        return (self.raw_maps(images, round_trip=round_trip) / self.scale).astype(np.float32)

    def anomaly_map(self, image: np.ndarray, *, round_trip: bool = False) -> np.ndarray:
        """The anomaly map of one image in normal units: (H, W) float32."""
        return self.anomaly_maps([image], round_trip=round_trip)[0]


def with_positions(features: torch.Tensor, scale: float) -> torch.Tensor:
    """(N, C, h, w) features -> (N*h*w, C+2) cells, each with its centre's (y, x) in [0, 1] times ``scale``."""
    import torch

    n, c, h, w = features.shape
    ys = (torch.arange(h, dtype=torch.float32, device=features.device) + 0.5) / h
    xs = (torch.arange(w, dtype=torch.float32, device=features.device) + 0.5) / w
    grid = torch.stack(torch.meshgrid(ys, xs, indexing="ij")).mul(scale).unsqueeze(0).expand(n, 2, h, w)
    return torch.cat([features.float(), grid], dim=1).permute(0, 2, 3, 1).reshape(-1, c + 2)


def _blur(grid: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian smoothing of (N, 1, h, w) maps; sigma in cells, borders replicated."""
    import torch
    import torch.nn.functional as F

    if sigma <= 0:
        return grid
    radius = max(1, math.ceil(3 * sigma))
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float32, device=grid.device)
    kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
    kernel = (kernel / kernel.sum()).to(grid.dtype)
    padded = F.pad(grid, (radius, radius, radius, radius), mode="replicate")
    out = F.conv2d(padded, kernel.view(1, 1, 1, -1))
    return F.conv2d(out, kernel.view(1, 1, -1, 1))


def split_holdout(count: int, config: VerifyConfig) -> tuple[list[int], list[int]]:
    """Seeded split of ``count`` normals into (bank indices, held-out indices), both sorted."""
    if count < 2:
        raise InputError(f"the normal model needs at least 2 normal images (one is held out), got {count}")
    held = min(count - 1, max(1, round(count * config.holdout)))
    order = np.random.default_rng(derive_seed(config.seed, "verify-holdout", count)).permutation(count)
    return sorted(int(i) for i in order[held:]), sorted(int(i) for i in order[:held])


def build_normal_model(
    backbone: Backbone,
    images: Sequence[np.ndarray],
    config: VerifyConfig | None = None,
    *,
    names: Sequence[str] | None = None,
    hashes: Sequence[str] | None = None,
    progress: ProgressCallback | None = None,
) -> NormalModel:
    """Build the normal model of a category from its normal (``train/good``) images.

    Args:
        backbone (`Backbone`): the backbone whose VAE the samples come from.
        images: HxWx3 uint8 RGB normal images, all at the synth resolution. Never test images: the held-out
            part used for calibration is taken from these.
        config (`VerifyConfig`, *optional*): parameters (defaults if omitted).
        names, hashes (*optional*): per image, a name and the sha256 of its file (recorded; default: index and
            the array's hash).
        progress: optional progress callback (task ``verify: normal model``).

    Returns:
        `NormalModel`: with the backbone's VAE attached.
    """
    import torch

    from anogen.verify.coreset import greedy_coreset
    from anogen.verify.features import resolve_blocks, round_trip, vae_features

    config = config or VerifyConfig()
    images = [np.asarray(image) for image in images]
    if not images:
        raise InputError("the normal model needs normal images, got none")
    resolution = images[0].shape[0]
    if any(image.shape != (resolution, resolution, 3) or image.dtype != np.uint8 for image in images):
        raise InputError("normal images must all be square uint8 RGB images of one size")
    names = list(names) if names is not None else [f"{i:06d}" for i in range(len(images))]
    hashes = list(hashes) if hashes is not None else [array_sha256(image) for image in images]
    if len(names) != len(images) or len(hashes) != len(images):
        raise InputError("names and hashes must have one entry per normal image")
    vae = backbone.vae
    bank_idx, held_idx = split_holdout(len(images), config)
    total = len(images) + 2
    report(progress, "verify: normal model", 0, total)
    # Every normal goes through the VAE once, as a generated image would come out of the decoder.
    trip: list[np.ndarray] = []
    for start in range(0, len(images), config.batch_size):
        trip.extend(round_trip(vae, images[start : start + config.batch_size], config.batch_size))
        report(progress, "verify: normal model", len(trip), total)
    blocks = resolve_blocks(vae, config.feature_blocks)
    features = vae_features(vae, [trip[i] for i in bank_idx], blocks, config.feature_pool, config.batch_size)
    flat = features.permute(0, 2, 3, 1).reshape(-1, features.shape[1])
    # The features' own spread sets the unit of the coordinates, so one weight fits every backbone's features.
    spread = float(((flat - flat.mean(dim=0)) ** 2).sum(dim=1).mean().sqrt())
    position_scale = config.position_weight * spread
    cells = with_positions(features, position_scale)
    keep = min(config.bank_max, max(1, math.ceil(config.coreset_ratio * cells.shape[0])))
    chosen = greedy_coreset(cells, keep, seed=derive_seed(config.seed, "verify-coreset"))
    bank = cells[chosen.to(cells.device)].float().cpu().contiguous()
    report(progress, "verify: normal model", len(images) + 1, total)
    model = NormalModel(
        bank=bank,
        holdout_max=torch.zeros(0),
        config=config,
        blocks=blocks,
        resolution=resolution,
        stride=resolution // int(features.shape[-1]),
        position_scale=position_scale,
        backbone_hash=backbone.content_hash,
        inputs=[{"name": n, "sha256": h} for n, h in zip(names, hashes, strict=True)],
        holdout_names=[names[i] for i in held_idx],
        vae=vae,
    )
    # The held-out normals are already round-tripped: score them as they are.
    held_maps = model.raw_maps([trip[i] for i in held_idx])
    model.holdout_max = torch.from_numpy(np.sort(held_maps.reshape(len(held_idx), -1).max(axis=1))).float()
    report(progress, "verify: normal model", total, total)
    return model
