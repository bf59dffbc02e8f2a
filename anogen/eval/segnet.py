"""The detector of the downstream protocol: a small discriminative segmentation U-Net (image in, anomaly map out).

Modelled on the discriminative sub-network of DRAEM (Zavrtanik et al. 2021), minus its reconstruction input:
an encoder-decoder with skip connections that predicts, per pixel, the logit of "anomalous", trained with a
focal loss. The image score is the maximum of the anomaly map after a box filter (DRAEM's rule), so one hot
pixel does not decide an image.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _block(c_in: int, c_out: int) -> nn.Sequential:
    # GroupNorm, not BatchNorm: identical behaviour in training and evaluation, whatever the batch size.
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1),
        nn.GroupNorm(min(8, c_out), c_out),
        nn.ReLU(inplace=True),
        nn.Conv2d(c_out, c_out, 3, padding=1),
        nn.GroupNorm(min(8, c_out), c_out),
        nn.ReLU(inplace=True),
    )


class SegNet(nn.Module):
    """A U-Net mapping `(B, 3, H, W)` images in [-1, 1] to `(B, 1, H, W)` anomaly logits.

    Args:
        width (`int`, defaults to 16): channels of the first level; each level below doubles it.
        depth (`int`, defaults to 3): number of down-sampling steps; H and W must be multiples of ``2**depth``.
    """

    def __init__(self, width: int = 16, depth: int = 3) -> None:
        super().__init__()
        self.depth = depth
        channels = [width * 2**i for i in range(depth + 1)]
        self.encoders = nn.ModuleList([_block(3, channels[0])])
        self.encoders.extend(_block(channels[i], channels[i + 1]) for i in range(depth))
        self.decoders = nn.ModuleList(_block(channels[i + 1] + channels[i], channels[i]) for i in range(depth))
        self.head = nn.Conv2d(channels[0], 1, 1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        skips = []
        h = images
        for i, encoder in enumerate(self.encoders):
            if i > 0:
                h = F.max_pool2d(h, 2)
            h = encoder(h)
            skips.append(h)
        for i in reversed(range(self.depth)):
            h = F.interpolate(h, size=skips[i].shape[-2:], mode="bilinear", align_corners=False)
            h = self.decoders[i](torch.cat([h, skips[i]], dim=1))
        return self.head(h)


def build_segnet(seed: int, width: int = 16, depth: int = 3) -> SegNet:
    """A freshly initialised :class:`SegNet` whose weights depend only on ``seed``.

    ``nn.Module`` initialisers draw from torch's global generator; it is forked so the caller's global random
    state is neither read nor changed.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return SegNet(width=width, depth=depth)


def focal_loss(
    logits: torch.Tensor, targets: torch.Tensor, gamma: float = 2.0, alpha: float | None = None
) -> torch.Tensor:
    """Binary focal loss (Lin et al. 2017), averaged over pixels.

    ``FL = -alpha_t * (1 - p_t)**gamma * log(p_t)``: well-classified pixels (most of the background) contribute
    little, so the rare anomalous pixels are not drowned out.

    Args:
        logits (`torch.Tensor`): predicted logits, any shape.
        targets (`torch.Tensor`): 0/1 truth of the same shape.
        gamma (`float`, defaults to 2.0): focusing parameter; 0 gives the binary cross-entropy.
        alpha (`float`, *optional*): weight of the positive class (``1 - alpha`` for the negative); none by default.
    """
    targets = targets.to(logits.dtype)
    bce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = torch.exp(-bce)
    loss = (1.0 - p_t) ** gamma * bce
    if alpha is not None:
        loss = loss * (alpha * targets + (1.0 - alpha) * (1.0 - targets))
    return loss.mean()


def image_scores(anomaly_maps: torch.Tensor, kernel: int) -> torch.Tensor:
    """One score per image: the maximum of the anomaly map after a ``kernel`` x ``kernel`` box filter.

    Args:
        anomaly_maps (`torch.Tensor` of shape `(B, 1, H, W)`): per-pixel probabilities.
        kernel (`int`): odd box size in pixels (DRAEM uses 21 at 256 px).
    """
    smoothed = F.avg_pool2d(anomaly_maps, kernel, stride=1, padding=kernel // 2, count_include_pad=False)
    return smoothed.flatten(1).max(dim=1).values


def score_kernel(resolution: int) -> int:
    """The box size of :func:`image_scores` at a resolution: DRAEM's 21 px at 256 px, scaled, odd, at least 3."""
    k = max(3, round(21 * resolution / 256))
    return k if k % 2 == 1 else k + 1
