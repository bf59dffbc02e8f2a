"""``anogen demo``: the whole pipeline on the built-in toy data set, on the CPU, in minutes.

make data -> load the shipped ``toy`` backbone -> prior -> fit -> synth -> mask -> export (MVTec) -> report.
Every stage reuses what an earlier run finished (the toy data is deterministic, priors are cached, fits resume
from their checkpoints and finished adapters are left alone, synth resumes and tops up to its count, export is
idempotent, the report is rewritten), so the same command after an interruption (Ctrl-C, a killed job) only does
what is missing. What cannot be continued (a rerun with another ``--seed``, ``--steps`` or ``--backbone``, or
outputs an older anogen made) is started over, with a one-line notice: the demo folder holds only the demo's own
outputs, so nothing of the user's is lost.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from anogen.progress import ProgressCallback

logger = logging.getLogger(__name__)

DEMO_KIND = "object"
DEMO_PRESET = "toy/object"
STAMP = "demo.json"
# What the demo removes below ``out`` when it must start over: its stages' outputs, and the toy data's marker so
# that the data is rewritten (deterministic, half a second) rather than trusted half-regenerated with another
# seed. The prior stays: its cache re-checks every input by hash.
DERIVED = ("runs", "synth", "export-mvtec", "report.html", "report.png", f"data/{DEMO_KIND}/toy.json")


@dataclass(frozen=True)
class DemoConfig:
    """What the demo runs.

    Args:
        out (`Path`): the folder every stage writes below.
        seed (`int`, defaults to 0): seed of the toy data, training and sampling.
        count (`int`, defaults to 24): accepted samples per defect type.
        steps (`int`, *optional*): training steps per defect type; ``None`` keeps the preset's.
        backbone (`str`, defaults to `"toy"`): the backbone (``tiny`` makes a fast smoke run of the plumbing, at
            its native 32 px as ``fit --backbone tiny`` trains).
        checkpoint_every (`int`, *optional*): steps between fit checkpoints; ``None`` keeps the preset's, or
            a quarter of ``steps`` when that is sooner (an interruption of a short run then loses little).
    """

    out: Path
    seed: int = 0
    count: int = 24
    steps: int | None = None
    backbone: str = "toy"
    checkpoint_every: int | None = None

    def settings(self) -> dict[str, Any]:
        """What an earlier run must share for this one to continue it (the count may change: synth tops up)."""
        return {"seed": self.seed, "steps": self.steps, "backbone": self.backbone}


@dataclass
class DemoResult:
    """Where each stage's output is, and how long each took (seconds)."""

    paths: dict[str, Path] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)
    notices: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "paths": {k: str(v) for k, v in self.paths.items()},
            "timings_s": {k: round(v, 2) for k, v in self.timings.items()},
            "summary": self.summary,
            "notices": list(self.notices),
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


def _start_over(out: Path, names: tuple[str, ...] = DERIVED) -> None:
    for name in names:
        path = out / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()


def _check_stamp(out: Path, config: DemoConfig, notice: Callable[[str], None]) -> None:
    """Start over when ``out`` holds a demo of other settings; then record this run's settings."""
    from anogen.io import write_json_atomic

    stamp = out / STAMP
    try:
        old = json.loads(stamp.read_text(encoding="utf-8")).get("settings") if stamp.is_file() else None
    except (OSError, ValueError, AttributeError):
        old = {}
    new = config.settings()
    if old is not None and old != new:
        changed = ", ".join(f"{k} {old.get(k)!r} -> {v!r}" for k, v in new.items() if old.get(k) != v)
        notice(f"{out} holds a demo made with other settings ({changed or 'unreadable record'}); starting it over")
        _start_over(out)
    write_json_atomic(stamp, {"schema_version": 1, "settings": new})


def run_demo(
    config: DemoConfig,
    *,
    progress: ProgressCallback | None = None,
    on_stage: Callable[[str], None] | None = None,
    on_notice: Callable[[str], None] | None = None,
) -> DemoResult:
    """Run every stage of the pipeline on the toy object category; return where the outputs are.

    Rerunning it with the same config continues an interrupted run (see the module docstring).

    Args:
        config (`DemoConfig`): output folder, seed, counts.
        progress (`ProgressCallback`, *optional*): receives the stages' progress events.
        on_stage (`Callable[[str], None]`, *optional*): called with a stage's name as it starts.
        on_notice (`Callable[[str], None]`, *optional*): called with one line when earlier outputs cannot be
            continued and are started over (logged as a warning when not given).
    """
    from anogen.config import BackboneConfig, ConfigRequest, resolve
    from anogen.data import read_category
    from anogen.errors import CompatibilityError
    from anogen.export import ExportConfig, export
    from anogen.export.report import write_report
    from anogen.fit import fit
    from anogen.model.backbone import load_backbone
    from anogen.model.spec import resolution_for_backbone
    from anogen.priors import build_prior
    from anogen.synth import remask, synthesize

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

    def notice(text: str) -> None:
        result.notices.append(text)
        if on_notice is not None:
            on_notice(text)
        else:
            logger.warning(text)

    _check_stamp(out, config, notice)
    started = stage("data")
    category_dir = _ensure_toy_data(paths["data"], config.seed, progress)
    category = read_category(category_dir)
    result.timings["data"] = time.perf_counter() - started

    started = stage("backbone")
    backbone = load_backbone(BackboneConfig(id=config.backbone))
    result.timings["backbone"] = time.perf_counter() - started

    started = stage("prior")
    build_prior(category, paths["prior"], progress=progress)
    result.timings["prior"] = time.perf_counter() - started

    started = stage("fit")
    overrides: dict[str, dict[str, Any]] = {
        "backbone": {"id": config.backbone},
        "train": {"seed": config.seed, "steps": config.steps, "checkpoint_every": config.checkpoint_every},
        "sample": {"seed": config.seed, "count": config.count},
    }
    resolved = resolve(preset=DEMO_PRESET, overrides=overrides)
    if config.checkpoint_every is None and config.steps is not None:
        every = resolved.train.checkpoint_every
        quarter = max(1, config.steps // 4)
        if every <= 0 or quarter < every:
            overrides["train"]["checkpoint_every"] = quarter
            resolved = resolve(preset=DEMO_PRESET, overrides=overrides)
    # The same rule as `anogen fit --backbone tiny`: a backbone other than the preset's trains at its own size.
    resolved, resized = resolution_for_backbone(resolved)
    if resized is not None:
        logger.info(resized)

    def fit_all() -> list[Any]:
        # resume: an interrupted fit continues from its latest checkpoint, a finished adapter is left alone.
        return fit(
            category, resolved, paths["runs"], prior_dir=paths["prior"], resume=True, progress=progress,
            backbone=backbone,
        )

    try:
        fits = fit_all()
    except CompatibilityError as exc:
        notice(f"cannot continue the fits in {paths['runs']} ({exc.message}); starting them over")
        _start_over(out)
        fits = fit_all()
    result.summary["fit"] = [f.to_dict() for f in fits]
    result.timings["fit"] = time.perf_counter() - started

    started = stage("synth")
    # The fit's own sample and mask sections, whole: the demo samples exactly as it trained for.
    whole_sections = ConfigRequest(overrides={"sample": resolved.sample, "mask": resolved.mask})
    try:
        synth = synthesize(paths["runs"], paths["synth"], whole_sections, progress=progress)
    except CompatibilityError as exc:
        notice(f"cannot continue the samples in {paths['synth']} ({exc.message}); starting them over")
        _start_over(out, ("synth", "export-mvtec", "report.html", "report.png"))
        synth = synthesize(paths["runs"], paths["synth"], whole_sections, progress=progress)
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
