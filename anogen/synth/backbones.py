"""The checks every backbone of a synth run passes before weights load (the backbone a record names and holding
one at a time: :mod:`anogen.model.recorded`). No torch at import."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from anogen.errors import CompatibilityError

if TYPE_CHECKING:
    from anogen.synth.jobs import Job


def check_backbones(jobs: Sequence[Job]) -> None:
    """Every adapter must name a backbone with a content hash, and that backbone must be findable: the checks a
    real run makes before loading weights, shared with ``synth --dry-run`` (``describe_backbone``, as
    ``load_backbone`` starts with). The hash itself is checked against the loaded weights later."""
    from anogen.model.spec import describe_backbone

    for job in jobs:
        if not job.backbone.id or not job.backbone_hash:
            raise CompatibilityError(
                f"{job.adapter_dir / 'adapter.json'}: records no backbone (source and content_hash)",
                hint="refit it with this version of anogen",
            )
        describe_backbone(job.backbone)
