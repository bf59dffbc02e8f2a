"""What each category contributes to an export: the real category read with the project's readers, paired with
its synth sets, as normal and anomalous items with their provenance (no format has named a path yet).

No torch here.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from anogen.data.model import Category
from anogen.errors import DataError, InputError
from anogen.export.config import ExportConfig
from anogen.io import natural_key, safe_name
from anogen.records import SynthFolder
from anogen.records.synth import SynthSample

logger = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------- real data


def load_real_category(data: Path, category: str, data_format: str = "auto") -> Category:
    """Read the real category with the project's readers.

    ``data`` may be the data set root (the category is looked up by name) or the category folder itself,
    whatever its folder name.
    """
    from anogen.data import holds_category, read_category

    data = Path(data)
    named = holds_category(data, category)
    return read_category(data, category=category if named else None, dataset_format=data_format)


# ------------------------------------------------------------------------------------- source items


@dataclass(frozen=True)
class Provenance:
    """Where an output file comes from: a real file, or a synthetic sample (id, seed, adapter)."""

    kind: Literal["real", "synthetic"]
    path: Path
    category: str
    defect: str | None = None
    stem: str | None = None
    synth_dir: Path | None = None
    id: int | None = None
    name: str | None = None
    seed: int | None = None
    adapter_sha256: str | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind, "path": str(self.path), "category": self.category}
        for key in ("defect", "stem", "id", "name", "seed", "adapter_sha256"):
            value = getattr(self, key)
            if value is not None:
                out[key] = value
        if self.synth_dir is not None:
            out["synth_dir"] = str(self.synth_dir)
        return out


@dataclass(frozen=True)
class NormalItem:
    image: Path
    provenance: Provenance


@dataclass(frozen=True)
class AnomalyItem:
    image: Path
    mask: Path
    defect: str
    provenance: Provenance
    mask_provenance: Provenance


@dataclass
class CategoryItems:
    """Everything one category contributes to an export, before any format names a path."""

    name: str  # sanitised, usable as a folder name
    source_name: str
    dataset_format: str
    data_root: str | None
    target_size: tuple[int, int] | None  # None: every file keeps its own size (``--size native``)
    grayscale: bool
    train_normals: list[NormalItem] = field(default_factory=list)
    test_normals: list[NormalItem] = field(default_factory=list)
    anomalies: dict[str, list[AnomalyItem]] = field(default_factory=dict)  # sanitised defect -> items
    defect_names: dict[str, str] = field(default_factory=dict)  # sanitised -> original
    synth_sets: list[SynthFolder] = field(default_factory=list)


def _group_sets(sets: Iterable[SynthFolder], only: str | None) -> dict[str, list[SynthFolder]]:
    grouped: dict[str, list[SynthFolder]] = {}
    for s in sets:
        if only is not None and s.category != only and safe_name(s.category) != safe_name(only):
            continue
        grouped.setdefault(s.category, []).append(s)
    return grouped


def collect_items(sets: Sequence[SynthFolder], config: ExportConfig) -> list[CategoryItems]:
    """Pair the synth sets with their real category and list every normal and anomalous item to export.

    Raises:
        InputError: no synth folder matches ``--category``, names collide after sanitising, or the real
            held-out split is unknown while ``--include-real-test`` asks for it.
    """
    from anogen.data import holds_category

    grouped = _group_sets(sets, config.category)
    if not grouped:
        known = sorted({s.category for s in sets})
        raise InputError(f"no synth folder of category {config.category!r}", hint=f"categories found: {known}")
    used_names: dict[str, str] = {}
    result: list[CategoryItems] = []
    for source_name in sorted(grouped, key=natural_key):
        cat_sets = grouped[source_name]
        name = safe_name(source_name)
        if name in used_names:
            raise InputError(f"categories {used_names[name]!r} and {source_name!r} both become folder {name!r}")
        used_names[name] = source_name
        data_info = cat_sets[0].run.data
        real = None
        if config.data is not None:
            if len(grouped) > 1 and not holds_category(Path(config.data), source_name):
                raise InputError(
                    f"the synth folders hold {len(grouped)} categories but --data {config.data} is one category folder",
                    hint="pass --category NAME, or --data the data set root that holds every category",
                )
            real = load_real_category(config.data, source_name, config.data_format)
        if real is not None and real.errors:
            raise DataError(f"{config.data}: {real.errors[0]}", hint="run `anogen data check` on it")
        dataset_format = (real.dataset_format if real is not None else None) or data_info.get("format") or "folder"
        source_size = real.image_size if real is not None else _size_from_info(data_info)
        grayscale = real.is_grayscale if real is not None else bool(data_info.get("grayscale"))
        if config.size == "source":
            if source_size is None:
                raise InputError(
                    f"the source image size of category {source_name!r} is unknown",
                    hint="pass --data, or --size native / --size PX",
                )
            target: tuple[int, int] | None = (int(source_size[0]), int(source_size[1]))
        elif config.size == "native":
            target = None
        else:
            target = (int(config.size), int(config.size))
        items = CategoryItems(
            name=name,
            source_name=source_name,
            dataset_format=str(dataset_format),
            data_root=str(Path(real.root).resolve()) if real is not None else data_info.get("root"),
            target_size=target,
            grayscale=grayscale,
            synth_sets=list(cat_sets),
        )
        if real is not None:
            items.train_normals = [_normal(info, source_name) for info in real.train_normals]
            items.test_normals = [_normal(info, source_name) for info in real.test_normals]
        for synth in cat_sets:
            defect = safe_name(synth.defect)
            if items.defect_names.get(defect, synth.defect) != synth.defect:
                raise InputError(
                    f"defect types {items.defect_names[defect]!r} and {synth.defect!r} both become folder {defect!r}"
                )
            items.defect_names[defect] = synth.defect
            bucket = items.anomalies.setdefault(defect, [])
            if config.include_real_test and real is not None and not any(it.provenance.kind == "real" for it in bucket):
                bucket.extend(_real_held_out(real, synth))
            for sample in synth.samples:
                image_prov = _synthetic(sample, source_name, sample.image)
                mask_prov = _synthetic(sample, source_name, sample.mask)
                bucket.append(AnomalyItem(sample.image, sample.mask, defect, image_prov, mask_prov))
        result.append(items)
    return result


def _synthetic(sample: SynthSample, category: str, path: Path) -> Provenance:
    # Built whole rather than with dataclasses.replace, several times slower: an export makes two per sample.
    return Provenance(kind="synthetic", path=path, category=category, defect=sample.defect,
                      synth_dir=sample.synth_dir, id=sample.id, name=sample.name, seed=sample.seed,
                      adapter_sha256=sample.adapter_sha256)


def _size_from_info(info: dict[str, Any]) -> tuple[int, int] | None:
    size = info.get("image_size")
    if isinstance(size, int):
        return (size, size)
    if isinstance(size, (list, tuple)) and len(size) == 2:
        return (int(size[0]), int(size[1]))
    return None


def _normal(info: Any, category: str) -> NormalItem:
    path = Path(info.path).resolve()
    return NormalItem(path, Provenance(kind="real", path=path, category=category, stem=path.stem))


def _real_held_out(real: Any, synth: SynthFolder) -> list[AnomalyItem]:
    defect = real.defects.get(synth.defect) or real.defects.get(safe_name(synth.defect))
    if defect is None:
        logger.warning("real data has no defect type %r; no real test images added", synth.defect)
        return []
    stems = synth.held_out_stems
    if stems is None:
        raise InputError(
            f"{synth.folder / 'run.json'}: no few-shot split recorded, so the training shots of "
            f"{synth.defect!r} cannot be told from the held-out images",
            hint="export without --include-real-test, or re-run synth with an adapter that records its split",
        )
    wanted = set(stems)
    items: list[AnomalyItem] = []
    for sample in defect.samples:
        if sample.stem not in wanted:
            continue
        if sample.mask is None:
            logger.warning("%s has no ground-truth mask; left out of the export", sample.image.path)
            continue
        image = Path(sample.image.path).resolve()
        mask = Path(sample.mask.path).resolve()
        prov = Provenance(kind="real", path=image, category=synth.category, defect=synth.defect, stem=sample.stem)
        items.append(AnomalyItem(image, mask, safe_name(synth.defect), prov, dataclasses.replace(prov, path=mask)))
    return items

