"""The backbone an adapter record names (:func:`recorded_backbone`) and holding one loaded backbone at a time
(:class:`BackboneCache`), for the commands that load backbones from records: ``synth`` and ``verify``/``mask``'s
rescoring. No torch at import."""

from __future__ import annotations

from typing import TYPE_CHECKING

from anogen.config import BackboneConfig

if TYPE_CHECKING:
    import torch

    from anogen.model.backbone import Backbone
    from anogen.records import AdapterRecord, RunRecord


def recorded_backbone(record: AdapterRecord | RunRecord) -> tuple[BackboneConfig, str]:
    """The backbone an ``adapter.json`` (or a synth folder's ``run.json``) names, and the content hash it recorded
    (``""`` when none): the source it was loaded from, with the hub settings of its recorded ``backbone`` section.
    The one place a record's backbone is read (synth's jobs, verify's rescoring)."""
    made_for = record.backbone
    settings = record.config.get("backbone") or {}
    config = BackboneConfig(
        id=str(made_for.source or ""),
        revision=settings.get("revision"),
        cache_dir=settings.get("cache_dir"),
        seed=int(settings.get("seed", 0) or 0),
    )
    return config, str(made_for.content_hash or "")


class BackboneCache:
    """Holds at most one loaded backbone: a run over several adapters of one backbone loads it once, and one of
    another backbone first moves the held one to the CPU and drops it."""

    def __init__(self) -> None:
        self._config: BackboneConfig | None = None
        self._backbone: Backbone | None = None

    def get(self, config: BackboneConfig, device: torch.device | str) -> Backbone:
        """The backbone ``config`` describes, loaded on ``device`` (or the one already held)."""
        from anogen.model.backbone import load_backbone

        if self._backbone is None or self._config != config:
            if self._backbone is not None:
                self._backbone.to("cpu")
            self._backbone = None  # drop the old one before the new one loads: two SD-1.5 copies need not fit
            self._backbone = load_backbone(config, device=str(device))
            self._config = config
        return self._backbone
