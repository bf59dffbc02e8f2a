"""The ``copy`` check's reference: the training shots of a defect type and the backbone's own round-trip error.

A few-shot adapter can memorise its shots. A sample counts as a copy when it lies closer to a shot than a small
multiple of the distance between a shot and its own VAE round trip: that distance is the floor below which two
images cannot be told apart through this backbone, so it sets the scale for every backbone alike.

Images are compared at a fixed small side (area downsampling), after a Gaussian blur that removes the fine noise
the autoencoder does not reproduce, over every shift up to a few pixels and every flip (fit's augmentations
include flips, so a flipped shot is a copy too).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from anogen.errors import InputError
from anogen.verify.config import VerifyConfig

if TYPE_CHECKING:
    from anogen.model.backbone import Backbone

# Below this (half a grey level) the round-trip error is no scale at all: a lossless VAE would divide by zero.
MIN_ERROR = 0.5 / 255.0


def prepare(image: np.ndarray, size: int, blur: float) -> np.ndarray:
    """An HxWx3 uint8 image -> (size, size, 3) float32 in [0, 1], area-downsampled and blurred."""
    from scipy.ndimage import gaussian_filter

    image = np.asarray(image)
    if image.ndim != 3 or image.shape[-1] != 3:
        raise InputError(f"expected an HxWx3 RGB image, got shape {image.shape}")
    pil = Image.fromarray(image.astype(np.uint8))
    if pil.size != (size, size):
        pil = pil.resize((size, size), Image.BOX)
    array = np.asarray(pil, dtype=np.float32) / 255.0
    if blur > 0:
        array = gaussian_filter(array, sigma=(blur, blur, 0), mode="nearest")
    return array


def shifted_distance(a: np.ndarray, b: np.ndarray, max_shift: int) -> float:
    """The smallest mean absolute difference between ``a`` and ``b`` shifted by up to ``max_shift`` pixels.

    ``a`` may also be a stack (K, size, size, 3): the smallest over its members is returned. Only the central
    region that every shift covers is compared, so each shift is judged on the same pixels.
    """
    stack = a if a.ndim == 4 else a[None]
    size = stack.shape[1]
    m = max_shift
    if size <= 2 * m:
        raise InputError(f"copy_max_shift {m} is too large for images of {size} px")
    core = stack[:, m : size - m, m : size - m]
    best = np.inf
    for dy in range(-m, m + 1):
        for dx in range(-m, m + 1):
            other = b[m + dy : size - m + dy, m + dx : size - m + dx]
            best = min(best, float(np.abs(core - other[None]).mean(axis=(1, 2, 3)).min()))
    return best


def _variants(image: np.ndarray) -> list[np.ndarray]:
    return [image, image[:, ::-1], image[::-1, :], image[::-1, ::-1]]


@dataclass
class ShotBank:
    """Prepared training shots of one defect type and the backbone's round-trip error on them.

    Attributes:
        shots (`np.ndarray`): (S, size, size, 3) float32 prepared shots (see :func:`prepare`).
        round_trip_error (`float`): mean over shots of the distance from a shot to its own VAE round trip.
        config (`VerifyConfig`): comparison settings (``copy_size``, ``copy_max_shift``, ``copy_blur``).
    """

    shots: np.ndarray
    round_trip_error: float
    config: VerifyConfig

    def distance(self, image: np.ndarray) -> float:
        """Distance from an image (uint8 RGB, any size) to the nearest shot, over shifts and flips."""
        c = self.config
        query = prepare(image, c.copy_size, c.copy_blur)
        variants = np.concatenate([np.stack(_variants(shot)) for shot in self.shots])
        return shifted_distance(variants, query, c.copy_max_shift)


def build_shot_bank(backbone: Backbone, shots: Sequence[np.ndarray], config: VerifyConfig | None = None) -> ShotBank:
    """Prepare the training shots (the defect images ``fit`` used) and measure the backbone's round-trip error.

    Args:
        backbone (`Backbone`): the backbone whose VAE decodes the samples.
        shots: HxWx3 uint8 RGB training images of one defect type, at the synth resolution.
        config (`VerifyConfig`, *optional*): parameters.
    """
    from anogen.verify.features import round_trip

    config = config or VerifyConfig()
    shots = [np.asarray(s) for s in shots]
    if not shots:
        raise InputError("the copy check needs at least one training shot")
    trips = round_trip(backbone.vae, shots, config.batch_size)
    prepared = [prepare(s, config.copy_size, config.copy_blur) for s in shots]
    errors = [shifted_distance(p, prepare(t, config.copy_size, config.copy_blur), config.copy_max_shift)
              for p, t in zip(prepared, trips, strict=True)]
    return ShotBank(shots=np.stack(prepared), round_trip_error=max(float(np.mean(errors)), MIN_ERROR), config=config)
