"""Priors of a category: object masks, background images I_b, defect-location maps and mask-shape statistics.

``anogen prior`` writes them once per category; ``fit`` and ``synth`` read them back (BCM takes the background
images, the plausibility check takes the object masks). Everything here is training-free and offline.

Object masks come from a **background colour model taken from the image border**: the border strip is
median-filtered and clustered into a few colours (k-means, deterministic initialisation); clusters holding
only a small share of the border, or confined to one side of it (an object that touches the edge), are
dropped; every pixel's Mahalanobis distance to the nearest remaining cluster is thresholded (a fixed number
of the background's standard deviations, then raised to halfway to the object's typical distance so that
blurred edges are cut in their middle); the binary map is cleaned by opening and closing, its holes are
filled and its largest component kept.
Object masks are estimated for defect images too, so that defect locations can be expressed in the object's
frame (its bounding box), whatever the object's position in each photo.

Layout of ``DIR/<category>/`` (see docs/priors.md)::

    prior.json                          schema_version, kind, method, params, source, one row per image
    object/<split>/<stem>.png           0/255 object mask at the image's size (object categories only)
    background/<split>/<stem>.png       the normal image with the object blacked out (object categories only)
    location/<defect>.npy, .png         64x64 map: share of defect masks covering each cell of the object box
    location.npy, location.png          the same over every defect type
    shapes.json                         mask-shape statistics per defect type
    preview.png                         object masks over normal images (object categories only)

Modules, one concern each (import the public names from ``anogen.priors``):

- :mod:`anogen.priors.params`: :class:`PriorParams` and the format constants of ``prior.json``;
- :mod:`anogen.priors.segmentation`: :func:`estimate_object_mask`, :func:`background_image`;
- :mod:`anogen.priors.record`: the consumers' side (:func:`load_prior`, :func:`object_mask_for`,
  :func:`background_paths`, :func:`split_of`, :func:`plausible_location`);
- :mod:`anogen.priors.inputs`: :func:`read_category_checked`, :func:`resolve_kind`, one job per source image;
- :mod:`anogen.priors.cache`: input keys, the ledger of an interrupted run, stale files;
- :mod:`anogen.priors.stats`: location maps, shape statistics, the preview;
- :mod:`anogen.priors.build`: :func:`build_prior`, :class:`PriorResult`;
- :mod:`anogen.priors.auto`: the prior ``fit`` builds itself (:func:`ensure_auto_prior`).
"""

from anogen.priors.auto import AUTO_PRIOR_DIR, AutoPrior, auto_prior_dir, ensure_auto_prior, needs_auto_prior
from anogen.priors.build import PriorResult, build_prior
from anogen.priors.cache import LEDGER
from anogen.priors.inputs import read_category_checked, resolve_kind
from anogen.priors.params import METHOD, PRIOR_SCHEMA_VERSION, KindSource, PriorParams, Role
from anogen.priors.record import (
    PriorImage,
    PriorRecord,
    background_paths,
    fraction_on_object,
    load_prior,
    object_mask_for,
    plausible_location,
    split_of,
)
from anogen.priors.segmentation import background_image, estimate_object_mask

__all__ = [
    "AUTO_PRIOR_DIR",
    "LEDGER",
    "METHOD",
    "PRIOR_SCHEMA_VERSION",
    "AutoPrior",
    "KindSource",
    "PriorImage",
    "PriorParams",
    "PriorRecord",
    "PriorResult",
    "Role",
    "auto_prior_dir",
    "background_image",
    "background_paths",
    "build_prior",
    "ensure_auto_prior",
    "estimate_object_mask",
    "fraction_on_object",
    "load_prior",
    "needs_auto_prior",
    "object_mask_for",
    "plausible_location",
    "read_category_checked",
    "resolve_kind",
    "split_of",
]
