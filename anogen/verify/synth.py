"""Verification inside ``anogen synth``: each job's ``verify:`` settings and the checks of each attempt.

Kept with the rest of verification; a job's ``verify`` section is resolved with its other configs
(:func:`anogen.synth.jobs.job_configs`), and :mod:`anogen.synth` calls :func:`verifier_for` /
:meth:`SampleVerifier.check` when it writes an attempt. With mode ``off`` no verifier
exists and synth takes exactly its earlier path. No torch at import.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from anogen.errors import InputError
from anogen.verify.config import VerifyConfig

if TYPE_CHECKING:
    from anogen.data.model import Category
    from anogen.model.backbone import Backbone
    from anogen.records import AdapterRecord, RunRecord
    from anogen.synth.jobs import Job
    from anogen.verify.normal import NormalModel
    from anogen.verify.shots import ShotBank


# Where a synth output keeps its category's normal model: hidden, so that folder walks (export, report) skip it.
CACHE_DIR = ".verify"


@dataclass
class SampleVerifier:
    """What ``synth`` checks each attempt with: the category's normal model and the defect type's shots."""

    config: VerifyConfig
    model: NormalModel
    shots: ShotBank | None

    def check(
        self, image: np.ndarray, mask: np.ndarray
    ) -> tuple[np.ndarray, dict[str, float | None], str | None]:
        """One attempt's mask (refined when ``refine`` is on, else the one given, as 0/255 uint8), its three
        scores (JSON-ready) and its reject reason (always ``None`` unless ``reject``)."""
        from anogen.verify.checks import reject_reason, score_sample

        anomaly_map = self.model.anomaly_map(image)
        if self.config.refine:
            from anogen.verify.refine import refine_mask

            width = round(self.config.refine_band * self.model.stride)
            refined = refine_mask(mask, anomaly_map, width=width, fraction=self.config.refine_fraction,
                                  floor=self.config.alignment_floor)
            mask = np.where(refined, 255, 0).astype(np.uint8)
        scores = score_sample(image, mask, anomaly_map, self.model, self.shots, self.config)
        return mask, scores.to_dict(), reject_reason(scores, self.config)


def _category_of(record: AdapterRecord | RunRecord) -> Category:
    from anogen.data import read_category

    data = record.data
    root = data.get("root")
    what = f"{record.category}/{record.defect}"
    if not root or not Path(str(root)).is_dir():
        raise InputError(
            f"verification of {what} needs the normals of its data set, and the adapter's data folder "
            f"{root or '(none recorded)'} is not there",
            hint="restore the data folder, or pass --verify off",
        )
    return read_category(Path(str(root)), dataset_format=str(data.get("format") or "auto"))


def normal_model_for(
    record: AdapterRecord | RunRecord, category_out: Path, backbone: Backbone, config: VerifyConfig
) -> NormalModel:
    """The category's normal model from its ``train/good`` normals (natural order), cached in
    ``category_out/.verify/`` (built when missing or when its inputs changed)."""
    from anogen.verify.cache import load_or_build_normal_model

    category = _category_of(record)
    paths = [info.path for info in category.train_normals]
    if not paths:
        raise InputError(f"category {category.name} has no normal training images to verify against",
                         hint="pass --verify off")
    model, _ = load_or_build_normal_model(category_out / CACHE_DIR, paths, backbone, backbone.resolution, config)
    return model


def verifier_for(job: Job, backbone: Backbone) -> SampleVerifier | None:
    """The verifier of one synth job, or ``None`` with mode ``off`` (synth then runs exactly as before)."""
    return make_verifier(job.record, job.defect, job.out_dir.parent, backbone, job.verify)


def make_verifier(
    record: AdapterRecord | RunRecord, defect: str, category_out: Path, backbone: Backbone, config: VerifyConfig
) -> SampleVerifier | None:
    """The normal model of ``record``'s category and the shots of ``defect`` (``None`` with mode ``off``).

    Args:
        record (`AdapterRecord | RunRecord`): the adapter's ``adapter.json`` (or, without it, the synth folder's
            ``run.json``): ``data``, where the normals are; ``split.train``, the shots fit trained on (the ``copy``
            reference).
        defect (`str`): the defect type whose shots are the reference.
        category_out (`Path`): the synth output's category folder (the model is cached in its ``.verify/``).
        backbone (`Backbone`): the backbone that made the samples.
        config (`VerifyConfig`): parameters and thresholds.
    """
    from anogen.verify.cache import read_normal_image
    from anogen.verify.shots import build_shot_bank

    if config.mode == "off":
        return None
    model = normal_model_for(record, category_out, backbone, config)
    stems = set((record.split.train if record.split is not None else None) or [])
    found = _category_of(record).defects.get(defect)
    paths = [s.image.path for s in (found.samples if found else []) if s.stem in stems]
    shots = None
    if paths:
        images = [read_normal_image(p, backbone.resolution) for p in paths]
        shots = build_shot_bank(backbone, images, config)
    return SampleVerifier(config, model, shots)


class OutputRescorer:
    """Keeps a synth folder's verification verdicts true when ``anogen mask`` rewrites its masks.

    A sample whose mask is unchanged keeps its recorded scores (its verdict is re-derived from them with the
    folder's thresholds); one whose mask changed, or that had no scores, is scored again (the normal model and the
    backbone are loaded only then). A folder verified with mode ``off`` (or made before verification existed) is
    left as ``anogen mask`` always left it.
    """

    def __init__(self, folder: Path, run: RunRecord) -> None:
        names = {f.name for f in dataclasses.fields(VerifyConfig)}
        recorded = {k: v for k, v in (run.verify or {}).items() if k in names}
        self.config = VerifyConfig(**recorded) if recorded else VerifyConfig()
        self.folder, self.run = folder, run
        self._verifier: SampleVerifier | None = None
        self.rescored = 0

    def model(self) -> NormalModel:
        """The category's normal model (loads the backbone and the cached model on first use)."""
        return self._get_verifier().model

    def _get_verifier(self) -> SampleVerifier:
        if self._verifier is None:
            from anogen.model.recorded import BackboneCache, recorded_backbone
            from anogen.records import ADAPTER_JSON, read_adapter_record

            adapter_dir = Path(self.run.adapter.path or "")
            record: AdapterRecord | RunRecord = (
                read_adapter_record(adapter_dir) if (adapter_dir / ADAPTER_JSON).is_file() else self.run
            )
            backbone = BackboneCache().get(recorded_backbone(self.run)[0], "cpu")
            verifier = make_verifier(record, str(self.run.defect), self.folder.parent, backbone, self.config)
            assert verifier is not None  # mode is not off here
            self._verifier = verifier
        return self._verifier

    def verdict(
        self, row: Mapping[str, Any], mask: np.ndarray, mask_changed: bool, accepted: bool, reason: str | None
    ) -> tuple[np.ndarray, bool, str | None, dict[str, float | None] | None]:
        """(mask, accepted, reason, scores or None) of a row whose new mask step gave ``mask`` and said
        (``accepted``, ``reason``); the mask is the refined one when the folder refines (``refine``)."""
        from anogen.io import load_rgb
        from anogen.verify.checks import CheckScores, reject_reason

        if self.config.mode == "off" or not accepted or not mask.any():
            return mask, accepted, reason, None
        scores = row.get("verify")
        if mask_changed or not isinstance(scores, Mapping):
            image = np.asarray(load_rgb(self.folder / str(row["image"])))
            mask, scores, _ = self._get_verifier().check(image, mask)
            self.rescored += 1
        alignment = scores.get("alignment")
        why = reject_reason(CheckScores(float("nan") if alignment is None else float(alignment),
                                        float(scores["background"]), scores.get("copy")), self.config)
        return mask, why is None, why, dict(scores)


def resume_verify(job: Job, run: RunRecord | None, explicit: bool) -> None:
    """Continue a folder with its own verification settings (``anogen verify`` may have changed them).

    As with masks: no verification setting asked for (no ``--verify`` / threshold flag, no ``--preset`` /
    ``--config``) keeps the folder's recorded ``verify``; explicit settings that differ from it are refused, so
    one folder never mixes two sets of thresholds.
    """
    from anogen.config import resolve
    from anogen.errors import CompatibilityError

    old = run.verify if run is not None else None
    if old is None:
        return
    names = {f.name for f in dataclasses.fields(VerifyConfig)}
    # A folder recorded before a field existed holds that field's default.
    old = resolve(overrides={"verify": {k: v for k, v in old.items() if k in names}}).verify.to_dict()
    if old == job.verify.to_dict():
        return
    if explicit:
        raise CompatibilityError(
            f"{job.out_dir}: existing samples were verified with other settings",
            hint=f"re-judge them first with `anogen verify {job.out_dir} ...`, then synth tops up",
        )
    job.verify = resolve(overrides={"verify": old}).verify
