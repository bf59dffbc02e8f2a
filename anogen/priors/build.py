"""Building a prior: :func:`build_prior` writes ``DIR/<category>/`` (layout in :mod:`anogen.priors`), reusing
what an earlier or interrupted run left, and :class:`PriorResult` says what it did."""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from anogen.data.model import Category, CategoryKind
from anogen.errors import DataError
from anogen.io import mask_to_png_array, safe_name, save_png_atomic, sha256_file, write_json_atomic
from anogen.priors.cache import (
    LEDGER,
    _inputs_key,
    _Ledger,
    _listed_outputs,
    _outputs_exist,
    _read_ledger,
    _read_old,
    _remove_stale,
)
from anogen.priors.inputs import _check_header, _jobs, _read_image, _source_rel, resolve_kind
from anogen.priors.params import METHOD, PRIOR_SCHEMA_VERSION, PriorParams
from anogen.priors.record import PriorImage
from anogen.priors.segmentation import background_image, estimate_object_mask
from anogen.priors.stats import _defect_statistics, _heat_png, _preview, _stats_stems
from anogen.progress import ProgressCallback, report

# The name the single-module priors.py logged under: log filters and formats keep seeing the same name.
logger = logging.getLogger("anogen.priors")


@dataclass
class PriorResult:
    """What :func:`build_prior` did (or, with ``dry_run``, would do)."""

    folder: Path
    kind: str
    kind_source: str
    written: list[Path] = field(default_factory=list)
    reused: list[Path] = field(default_factory=list)
    up_to_date: bool = False
    dry_run: bool = False
    warnings: list[str] = field(default_factory=list)
    median_object_fraction: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "folder": str(self.folder),
            "kind": self.kind,
            "kind_source": self.kind_source,
            "written": [str(p) for p in self.written],
            "reused": len(self.reused),
            "up_to_date": self.up_to_date,
            "dry_run": self.dry_run,
            "warnings": list(self.warnings),
            "median_object_fraction": self.median_object_fraction,
        }


def build_prior(
    category: Category,
    out_dir: str | Path,
    *,
    params: PriorParams | None = None,
    kind: Literal["auto", "object", "texture"] = "auto",
    preset_bcm: bool | None = None,
    force: bool = False,
    dry_run: bool = False,
    stats_from: Literal["train", "all"] = "train",
    shots: int | None = None,
    progress: ProgressCallback | None = None,
) -> PriorResult:
    """Write the priors of one category to ``out_dir/<category>/`` (layout: see :mod:`anogen.priors`).

    Cached: every image row stores the sha256 of its source file (and mask); with the same parameters,
    outputs whose source did not change are reused, and a rerun on unchanged inputs writes nothing at all.

    Args:
        category (`Category`): as returned by ``anogen.data.read_category``.
        out_dir (`str | Path`): the prior root ``DIR``.
        params (`PriorParams`, *optional*): extraction parameters.
        kind (`str`, defaults to `"auto"`): ``object``/``texture`` force the kind; ``auto`` asks the data set,
            then the preset (``preset_bcm``), then the images (see :func:`resolve_kind`).
        preset_bcm (`bool`, *optional*): the preset's ``adapter.bcm``.
        force (`bool`, defaults to False): ignore the cache and recompute everything.
        dry_run (`bool`, defaults to False): validate and list what would be written; write nothing.
        stats_from (`str`, defaults to `"train"`): which defect masks feed the location maps and shape
            statistics: ``train``, the few-shot training images of each defect type (``anogen.data.split``,
            so that nothing derived from held-out masks reaches generation), or ``all``.
        shots (`int`, *optional*): training images per defect type for ``stats_from="train"`` (``None``:
            the default split, floor(N/3), at least 1); use the value given to ``fit --shots``.
        progress (`ProgressCallback`, *optional*): receives ``prior <category>`` events.

    Raises:
        DataError: no normal images, an unreadable image or mask.
    """
    params = params or PriorParams()
    if not category.train_normals and not category.test_normals:
        raise DataError(
            f"category {category.name!r} has no normal images (train/good and test/good are empty)",
            path=category.root,
            hint="point DATA at a category folder with normal images",
        )
    folder = Path(out_dir) / safe_name(category.name)
    jobs = _jobs(category)
    kind_value, kind_source, warnings = resolve_kind(category, kind, preset_bcm=preset_bcm, params=params)
    for message in warnings:
        logger.warning(message)
    is_object = kind_value == CategoryKind.OBJECT.value
    result = PriorResult(folder, kind_value, kind_source, dry_run=dry_run, warnings=list(warnings))

    # Hash every input (cheap next to decoding) so that the cache survives copies and touches.
    hashes: dict[Path, str] = {}
    for job in jobs:
        for info in (job.info, job.mask):
            if info is not None and info.path not in hashes:
                try:
                    hashes[info.path] = sha256_file(info.path)
                except OSError as exc:
                    raise DataError(f"{info.path}: unreadable ({exc.strerror or exc})", path=info.path) from exc

    params_hash = params.digest()
    stats_stems = _stats_stems(category, stats_from, shots)
    inputs_key = _inputs_key(jobs, hashes, params_hash, kind_value, category, stats_stems)
    old = _read_old(folder)
    old_rows = {}
    if old is not None and not force and old.get("params_hash") == params_hash and old.get("kind") == kind_value:
        old_rows = {(r["split"], r["stem"]): r for r in old.get("images", [])}
        if old.get("inputs_key") == inputs_key and _outputs_exist(folder, old) and not (folder / LEDGER).exists():
            result.up_to_date = True
            result.median_object_fraction = old.get("median_object_fraction")
            result.warnings.extend(w for w in old.get("warnings", []) if w not in result.warnings)
            result.reused = [folder / p for p in _listed_outputs(old)]
            return result

    if not force and not dry_run:
        # Rows an interrupted run finished after the last prior.json: a killed run resumes where it stopped.
        old_rows.update(_read_ledger(folder / LEDGER, params_hash, kind_value))
    ledger = None if dry_run else _Ledger(folder / LEDGER, params_hash, kind_value)

    rows: list[PriorImage] = []
    # Paths, not arrays: a category of 1024 px photos would hold ~1 MB per mask in memory otherwise.
    object_masks: dict[tuple[str, str], Path] = {}
    total = len(jobs)
    task = f"prior {category.name}"
    report(progress, task, 0, total)
    for index, job in enumerate(jobs):
        digest = hashes[job.info.path]
        object_rel = f"object/{job.split}/{job.stem}.png" if is_object else None
        background_rel = (
            f"background/{job.split}/{job.stem}.png" if is_object and job.role in ("train", "test") else None
        )
        mask_digest = hashes.get(job.mask.path) if job.mask is not None else None
        previous = old_rows.get((job.split, job.stem))
        cached = (
            previous is not None
            and previous.get("sha256") == digest
            and all((folder / rel).is_file() for rel in (object_rel, background_rel) if rel)
        )
        fraction: float | None = None
        fallback = False
        if is_object:
            if cached:
                fraction = previous.get("object_fraction")
                fallback = bool(previous.get("fallback"))
                result.reused.extend(folder / rel for rel in (object_rel, background_rel) if rel)
                if not dry_run:
                    object_masks[(job.split, job.stem)] = folder / object_rel  # type: ignore[operator]
            elif dry_run:
                result.written.extend(folder / rel for rel in (object_rel, background_rel) if rel)
                _check_header(job.info.path)
            else:
                image = _read_image(job.info.path)
                obj = estimate_object_mask(image, params)
                if obj.mean() < params.min_object_fraction:
                    fallback = True
                    message = (
                        f"no object found in {job.info.path} (nothing stands out from the border); "
                        "its object mask is the whole image"
                    )
                    logger.warning(message)
                    result.warnings.append(message)
                    obj = np.ones_like(obj)
                fraction = round(float(obj.mean()), 6)
                save_png_atomic(folder / object_rel, mask_to_png_array(obj))  # type: ignore[operator]
                result.written.append(folder / object_rel)  # type: ignore[operator]
                if background_rel:
                    save_png_atomic(folder / background_rel, background_image(image, obj))
                    result.written.append(folder / background_rel)
                object_masks[(job.split, job.stem)] = folder / object_rel  # type: ignore[operator]
        row = PriorImage(
            role=job.role,
            split=job.split,
            stem=job.stem,
            source=_source_rel(category, job.info.path),
            sha256=digest,
            object=object_rel,
            background=background_rel,
            object_fraction=fraction,
            fallback=fallback,
            defect=job.defect,
            mask_sha256=mask_digest,
        )
        rows.append(row)
        if ledger is not None and is_object and not cached:
            ledger.add(row)
        report(progress, task, index + 1, total)

    summary_files = ["prior.json", "shapes.json", "location.npy", "location.png"]
    for name in sorted({j.defect for j in jobs if j.defect}):
        summary_files += [f"location/{name}.npy", f"location/{name}.png"]
    if is_object:
        summary_files.append("preview.png")
    if dry_run:
        result.written.extend(folder / name for name in summary_files)
        return result

    defects_info, shapes = _defect_statistics(jobs, object_masks, params, stats_stems, stats_from)
    total_masks = 0
    combined = np.zeros((params.location_size, params.location_size), dtype=np.float64)
    for name, info in defects_info.items():
        heat = info.pop("_heat")
        np.save(_tmp_npy(folder / f"location/{name}.npy"), heat.astype(np.float32))
        _finish_npy(folder / f"location/{name}.npy")
        save_png_atomic(folder / f"location/{name}.png", _heat_png(heat))
        result.written.extend([folder / f"location/{name}.npy", folder / f"location/{name}.png"])
        combined += heat * info["with_mask"]
        total_masks += info["with_mask"]
    combined = combined / max(1, total_masks)
    np.save(_tmp_npy(folder / "location.npy"), combined.astype(np.float32))
    _finish_npy(folder / "location.npy")
    save_png_atomic(folder / "location.png", _heat_png(combined))
    write_json_atomic(folder / "shapes.json", {"schema_version": PRIOR_SCHEMA_VERSION, "defects": shapes})
    result.written.extend([folder / "location.npy", folder / "location.png", folder / "shapes.json"])
    if is_object:
        normals = [r for r in rows if r.role in ("train", "test")]
        save_png_atomic(folder / "preview.png", _preview(category, jobs, object_masks, params.preview_count))
        result.written.append(folder / "preview.png")
        fractions = [r.object_fraction for r in normals if r.object_fraction is not None]
        result.median_object_fraction = round(float(np.median(fractions)), 6) if fractions else None

    from anogen import __version__

    record = {
        "schema_version": PRIOR_SCHEMA_VERSION,
        "anogen_version": __version__,
        "category": category.name,
        "kind": kind_value,
        "kind_source": kind_source,
        "method": METHOD if is_object else "none (texture: no object masks)",
        "params": params.to_dict(),
        "params_hash": params_hash,
        "inputs_key": inputs_key,
        "source": {
            "root": str(category.root.resolve()),
            "format": category.dataset_format,
            "category": category.name,
            "image_size": list(category.image_size) if category.image_size else None,
        },
        "median_object_fraction": result.median_object_fraction,
        "images": [dataclasses.asdict(r) for r in rows],
        "defects": defects_info,
        "shapes": "shapes.json",
        "location": "location.npy",
        "preview": "preview.png" if is_object else None,
        "warnings": result.warnings,
    }
    if old is not None:
        _remove_stale(folder, old, record)
    write_json_atomic(folder / "prior.json", record)
    if ledger is not None:
        ledger.close(remove=True)
    result.written.append(folder / "prior.json")
    return result


def _tmp_npy(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return path.with_name(f".{path.name}.tmp.npy")


def _finish_npy(path: Path) -> None:
    # np.save needs a real path; write beside the target and rename, as anogen.io does for other files.
    path.with_name(f".{path.name}.tmp.npy").replace(path)
