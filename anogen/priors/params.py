"""What a prior is made with: the format constants of ``prior.json`` and :class:`PriorParams`, the parameters
of object-mask extraction and location statistics, whose digest is part of every cache key."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from typing import Any, Literal

PRIOR_SCHEMA_VERSION = 1
METHOD = "border-colour-model"
Role = Literal["train", "test", "defect"]
KindSource = Literal["flag", "dataset", "preset", "guessed"]


@dataclass(frozen=True)
class PriorParams:
    """Parameters of object-mask extraction and of the location statistics.

    Args:
        work_size (`int`, defaults to 256): masks are computed with the long side at most this many pixels
            (larger images are downscaled, the mask upsampled back); keeps 1024 px photos fast.
        border (`float`, defaults to 0.04): width of the border strip that defines the background, as a
            fraction of the short side (at least 2 px).
        median (`int`, defaults to 3): median filter size in working pixels before the colour distance
            (suppresses sensor noise and fine background texture, keeps edges in place); 0 or 1 disables it.
        smooth (`float`, defaults to 0.0): an extra Gaussian sigma in working pixels (0 disables it).
        clusters (`int`, defaults to 3): background colours (k-means clusters over the border pixels).
        min_cluster_share (`float`, defaults to 0.1): clusters with less of the border than this are taken
            to be object pixels touching the edge and are dropped.
        noise_floor (`float`, defaults to 0.02): standard deviation added to every cluster (0-1 scale), so
            that a perfectly flat background still has a finite distance scale.
        threshold (`float | str`, defaults to 4.0): distance threshold in background standard deviations
            (a Gaussian background passes 4 sigma on about 1 pixel in 10^3; opening removes those);
            ``"otsu"`` picks it per image by Otsu, clamped to [``min_threshold``, ``max_threshold``] (measured
            worse: a small, very distinct part, e.g. a stain, pulls Otsu above the object's body).
        edge_level (`float`, defaults to 0.5): the threshold is raised to this share of the object's median
            distance, which puts the edge of a blurred object halfway between background and object; 0
            keeps the noise-floor threshold alone.
        min_threshold (`float`, defaults to 3.0): lowest threshold Otsu may pick.
        max_threshold (`float`, defaults to 8.0): highest threshold Otsu may pick.
        morph_radius (`float`, defaults to 0.03): opening/closing radius as a fraction of the short side
            (at least 1 px).
        refine (`bool`, defaults to True): a second pass whose background model comes from every pixel well
            outside the first mask (not only the border), which detaches background patches of a colour the
            border lacks.
        fill_holes (`bool`, defaults to True): fill holes (object parts coloured like the background).
        largest_component (`bool`, defaults to True): keep only the largest connected component.
        min_object_fraction (`float`, defaults to 0.005): a smaller object means "none found"; the mask
            then falls back to the whole image (nothing is ever rejected for lying off it) with a warning.
        location_size (`int`, defaults to 64): side of the location map.
        preview_count (`int`, defaults to 16): normal images shown in ``preview.png``.
    """

    work_size: int = 256
    border: float = 0.04
    median: int = 3
    smooth: float = 0.0
    clusters: int = 3
    min_cluster_share: float = 0.1
    noise_floor: float = 0.02
    threshold: float | Literal["otsu"] = 4.0
    min_threshold: float = 3.0
    max_threshold: float = 8.0
    edge_level: float = 0.5
    morph_radius: float = 0.03
    fill_holes: bool = True
    refine: bool = True
    largest_component: bool = True
    min_object_fraction: float = 0.005
    location_size: int = 64
    preview_count: int = 16

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def digest(self) -> str:
        """Hash of the parameters and method name; part of every cache key."""
        text = json.dumps({"method": METHOD, "params": self.to_dict()}, sort_keys=True)
        return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]
