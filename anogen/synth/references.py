"""Backgrounds: the real normal images of a category (from its prior) that BCM samples against and whose object
masks ``on_object_only`` checks, cycled by attempt id. No torch."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from anogen.config import SampleConfig
from anogen.errors import InputError
from anogen.io import load_mask, load_rgb
from anogen.records import AdapterRecord, RunRecord
from anogen.synth.bcm import pool_size, reference_index

logger = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------- backgrounds


@dataclass
class References:
    """Real normal images of a category, cycled by attempt id: BCM backgrounds and object masks."""

    stems: list[str]
    backgrounds: list[np.ndarray]
    object_masks: list[np.ndarray | None]
    folder: Path | None
    every: int = 1  # a new reference every `every` attempts (SampleConfig.bcm_reference_every)

    def index(self, sample_id: int) -> int:
        """The reference attempt ``sample_id`` uses (its background and object mask)."""
        return reference_index(sample_id, len(self.stems), self.every)

    def object_mask(self, sample_id: int) -> np.ndarray | None:
        if not self.object_masks:
            return None
        return self.object_masks[self.index(sample_id)]

    def scheduled(self, sample: SampleConfig) -> References:
        """These references cut to ``sample.bcm_reference_pool`` and changed every ``bcm_reference_every``."""
        n = pool_size(len(self.stems), sample.bcm_reference_pool)
        return References(
            self.stems[:n],
            self.backgrounds[:n],
            self.object_masks[:n],
            self.folder,
            every=sample.bcm_reference_every,
        )


def load_references(record: AdapterRecord | RunRecord, *, need_backgrounds: bool, need_objects: bool) -> References:
    """The category's normal training images from the adapter's prior (adapter.json ``prior``), in the order
    :func:`anogen.priors.background_paths` gives (synth cycles them by attempt id): their backgrounds I_b for BCM
    and their object masks for ``on_object_only``.

    A texture category has neither: BCM is then an error, the object check is skipped (with a warning).
    """
    category = str(record.category or "")
    prior = record.prior
    if not (need_backgrounds or need_objects):
        return References([], [], [], None)
    what = "BCM backgrounds" if need_backgrounds else "object masks (--on-object-only)"
    if not prior:
        raise InputError(
            f"{what} come from the prior of category {category!r}, and its adapter.json records none",
            hint="run `anogen prior DATA`, fit with --prior, or drop --on-object-only",
        )
    from anogen.priors import background_paths, load_prior

    prior_record = load_prior(str(prior), category)
    paths = background_paths(str(prior), category)
    if not paths:
        if need_backgrounds:
            raise InputError(f"the prior in {prior_record.folder} has no backgrounds ({prior_record.kind} category)")
        logger.warning("%s: a %s category has no object masks; --on-object-only is skipped", category,
                       prior_record.kind)
        return References([], [], [], prior_record.folder)
    by_background = {prior_record.folder / r.background: r for r in prior_record.images if r.background}
    stems, backgrounds, objects = [], [], []
    for path in paths:
        row = by_background[path]
        stems.append(f"{row.split}/{row.stem}")
        if need_backgrounds:
            backgrounds.append(np.asarray(load_rgb(path)))
        if need_objects:
            objects.append(load_mask(prior_record.folder / row.object) if row.object else None)
    return References(stems, backgrounds, objects, prior_record.folder)
