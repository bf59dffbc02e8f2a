"""``anogen demo``: the whole pipeline on the built-in toy data set, on the CPU, in minutes.

make data -> load the shipped ``toy`` backbone -> prior -> fit -> synth -> mask -> export (MVTec) -> report.
Every stage reuses what an earlier run finished (the toy data is deterministic, priors are cached, finished
adapters are left alone, synth tops up to its count, export is idempotent), so a rerun only does what is missing.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from anogen.progress import ProgressCallback

logger = logging.getLogger(__name__)

DEMO_KIND = "object"
DEMO_PRESET = "toy/object"


@dataclass(frozen=True)
class DemoConfig:
    """What the demo runs.

    Args:
        out (`Path`): the folder every stage writes below.
        seed (`int`, defaults to 0): seed of the toy data, training and sampling.
        count (`int`, defaults to 24): accepted samples per defect type.
        steps (`int`, *optional*): training steps per defect type; ``None`` keeps the preset's.
        backbone (`str`, defaults to `"toy"`): the backbone (``tiny`` makes a fast smoke run of the plumbing).
    """

    out: Path
    seed: int = 0
    count: int = 24
    steps: int | None = None
    backbone: str = "toy"


@dataclass
class DemoResult:
    """Where each stage's output is, and how long each took (seconds)."""

    paths: dict[str, Path] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "paths": {k: str(v) for k, v in self.paths.items()},
            "timings_s": {k: round(v, 2) for k, v in self.timings.items()},
            "summary": self.summary,
        }


def _ensure_toy_data(root: Path, seed: int, progress: ProgressCallback | None) -> Path:
    from anogen.toy.data import make_category

    folder = root / DEMO_KIND
    marker = folder / "toy.json"
    if marker.is_file():
        try:
            recorded = json.loads(marker.read_text(encoding="utf-8"))
        except ValueError:
            recorded = {}
        if recorded.get("seed") == seed and recorded.get("kind") == DEMO_KIND:
            return folder
    return Path(make_category(root, kind=DEMO_KIND, seed=seed, progress=progress))


def run_demo(
    config: DemoConfig,
    *,
    progress: ProgressCallback | None = None,
    on_stage: Callable[[str], None] | None = None,
) -> DemoResult:
    """Run every stage of the pipeline on the toy object category; return where the outputs are.

    Args:
        config (`DemoConfig`): output folder, seed, counts.
        progress (`ProgressCallback`, *optional*): receives the stages' progress events.
        on_stage (`Callable[[str], None]`, *optional*): called with a stage's name as it starts.
    """
    from anogen.config import resolve
    from anogen.data import read_category
    from anogen.export.common import ExportConfig, export
    from anogen.export.report import write_report
    from anogen.model.backbone import load_backbone
    from anogen.priors import build_prior
    from anogen.sample import remask, synthesize
    from anogen.train import fit

    out = Path(config.out)
    result = DemoResult()
    paths = result.paths
    paths.update(
        data=out / "data",
        prior=out / "prior",
        runs=out / "runs",
        synth=out / "synth",
        export=out / "export-mvtec",
        report=out / "report.html",
    )

    def stage(name: str) -> float:
        if on_stage is not None:
            on_stage(name)
        return time.perf_counter()

    started = stage("data")
    category_dir = _ensure_toy_data(paths["data"], config.seed, progress)
    category = read_category(category_dir)
    result.timings["data"] = time.perf_counter() - started

    started = stage("backbone")
    backbone = load_backbone(config.backbone)
    result.timings["backbone"] = time.perf_counter() - started

    started = stage("prior")
    build_prior(category, paths["prior"], progress=progress)
    result.timings["prior"] = time.perf_counter() - started

    started = stage("fit")
    overrides: dict[str, dict[str, Any]] = {
        "backbone": {"id": config.backbone},
        "train": {"seed": config.seed, "steps": config.steps},
        "sample": {"seed": config.seed, "count": config.count},
    }
    resolved = resolve(preset=DEMO_PRESET, overrides=overrides)
    fits = fit(category, resolved, paths["runs"], prior_dir=paths["prior"], progress=progress, backbone=backbone)
    result.summary["fit"] = [f.to_dict() for f in fits]
    result.timings["fit"] = time.perf_counter() - started

    started = stage("synth")
    synth = synthesize(paths["runs"], paths["synth"], resolved.sample, resolved.mask, progress=progress)
    result.summary["synth"] = synth.to_dict()
    result.timings["synth"] = time.perf_counter() - started

    started = stage("mask")
    # Same thresholds as synth: this shows the re-thresholding step and must leave the accepted set as it is.
    remask(paths["synth"], resolved.mask, progress=progress)
    result.timings["mask"] = time.perf_counter() - started

    started = stage("export")
    export_config = ExportConfig(format="mvtec", out=paths["export"], data=category_dir)
    export([paths["synth"]], export_config, progress=progress)
    result.timings["export"] = time.perf_counter() - started

    started = stage("report")
    report = write_report([paths["synth"]], paths["report"], progress=progress)
    result.summary["report"] = {k: str(v) for k, v in vars(report).items() if isinstance(v, (str, Path, int))}
    result.timings["report"] = time.perf_counter() - started
    return result
