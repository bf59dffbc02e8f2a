"""Backbones of a synth run: the checks every adapter's recorded backbone passes before weights load, and loading
(one at a time, cached) the backbone an adapter or run record names. No torch at import."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from anogen.errors import CompatibilityError

if TYPE_CHECKING:
    import torch

    from anogen.model.backbone import Backbone
    from anogen.records import AdapterRecord, RunRecord
    from anogen.synth.jobs import Job


def load_backbone_for(
    record: AdapterRecord | RunRecord, cache: dict[tuple[str, str], Backbone], device: torch.device | str
) -> Backbone:
    """The backbone an ``adapter.json`` (or a synth folder's ``run.json``) names, loaded on ``device``.

    ``cache`` holds at most one backbone, keyed by (source, content hash): a run over several adapters of one
    backbone loads it once, and one of another backbone first moves the cached one to the CPU and drops it.
    """
    from anogen.model.backbone import load_backbone

    made_for = record.backbone
    source = str(made_for.source or "")
    key = (source, str(made_for.content_hash))
    if key not in cache:
        for other in cache.values():
            other.to("cpu")
        bb_cfg = record.config.get("backbone") or {}
        cache.clear()
        cache[key] = load_backbone(
            source,
            cache_dir=bb_cfg.get("cache_dir"),
            revision=bb_cfg.get("revision"),
            seed=int(bb_cfg.get("seed", 0) or 0),
            device=str(device),
        )
    return cache[key]


def check_backbones(jobs: Sequence[Job]) -> None:
    """Every adapter must name a backbone with a content hash, and that backbone must be findable: the checks a
    real run makes before loading weights, shared with ``synth --dry-run`` (``describe_backbone``, as
    ``load_backbone`` starts with). The hash itself is checked against the loaded weights later."""
    from anogen.model.spec import describe_backbone

    for job in jobs:
        made_for = job.record.backbone
        if not made_for.source or not made_for.content_hash:
            raise CompatibilityError(
                f"{job.adapter_dir / 'adapter.json'}: records no backbone (source and content_hash)",
                hint="refit it with this version of anogen",
            )
        bb_cfg = job.record.config.get("backbone") or {}
        describe_backbone(str(made_for.source), cache_dir=bb_cfg.get("cache_dir"), revision=bb_cfg.get("revision"))
