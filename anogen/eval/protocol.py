"""The downstream protocol: train a segmentation network on synthetic anomalies, score held-out real ones.

For each method (``anogen`` = the synth output, and any of the baselines ``perlin``, ``cutpaste``, ``none``)
the same :class:`~anogen.eval.segnet.SegNet` is trained from the same seed on the category's normal training
images plus that method's anomalies:

- ``anogen``: the accepted samples of the synth folders (image + mask);
- ``perlin`` / ``cutpaste``: classical anomalies made on the fly from the normal training images;
- ``none``: the few real shots the adapters were fitted on (the split's ``train`` images with their masks).

Model selection (which training step's weights are kept) looks only at a validation set made of a fraction of
the normal training images plus synthetic anomalies of the same method (held-out synth samples, or classical
anomalies made from the validation normals). ``none`` has no synthetic data, so it keeps its last step. The
test set is every ``test/good`` image and every held-out real defect image (``split.held_out``, i.e. not in
``split.train``) of the defect types the synth output covers; an image that any training set used is refused.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from anogen.data.model import Category
from anogen.errors import CompatibilityError, InputError
from anogen.eval import baselines as classical
from anogen.eval.metrics import DEFAULT_FPR_LIMIT, average_precision, detection_metrics, roc_auc
from anogen.io import load_mask, load_rgb, safe_name, sha256_file
from anogen.progress import ProgressCallback, report
from anogen.records import RunRecord
from anogen.seeding import derive_seed

logger = logging.getLogger(__name__)

EVAL_SCHEMA_VERSION = 1
METHODS = ("anogen", *classical.BASELINES)

AnomalySampler = Callable[[np.random.Generator], tuple[np.ndarray, np.ndarray]]


@dataclass(frozen=True)
class EvalConfig:
    """How ``anogen eval`` trains and scores the detector.

    Args:
        resolution (`int`, defaults to 64): square size every image is resized to (a multiple of 8).
        steps (`int`, defaults to 400): optimiser steps per method.
        batch_size (`int`, defaults to 16): images per step.
        learning_rate (`float`, defaults to 1e-3): Adam learning rate.
        anomaly_fraction (`float`, defaults to 0.5): chance that a batch slot holds an anomaly, not a normal.
        val_fraction (`float`, defaults to 0.2): share of normal training images and synthetic samples held out
            for model selection.
        val_every (`int`, *optional*): steps between validations; ``None`` is ``steps // 10`` (at least 1).
        width (`int`, defaults to 16): channels of the network's first level.
        baselines (`tuple[str, ...]`): extra methods trained side by side: ``perlin``, ``cutpaste``, ``none``.
        device (`str`, defaults to `"auto"`): ``auto`` (CUDA when present), ``cpu``, ``cuda``...
        fpr_limit (`float`, defaults to 0.3): AU-PRO's integration limit.
        max_synth (`int`, *optional*): use at most this many accepted samples per defect type.
        seed (`int`, defaults to 0): seed of initialisation, batches, splits and classical anomalies.
    """

    resolution: int = 64
    steps: int = 400
    batch_size: int = 16
    learning_rate: float = 1e-3
    anomaly_fraction: float = 0.5
    val_fraction: float = 0.2
    val_every: int | None = None
    width: int = 16
    baselines: tuple[str, ...] = ()
    device: str = "auto"
    fpr_limit: float = DEFAULT_FPR_LIMIT
    max_synth: int | None = None
    seed: int = 0

    def validate(self) -> None:
        if self.resolution < 8 or self.resolution % 8:
            raise InputError(f"--resolution must be a multiple of 8 (>= 8), got {self.resolution}")
        if self.steps < 1 or self.batch_size < 1:
            raise InputError("--steps and --batch-size must be at least 1")
        if not 0.0 < self.anomaly_fraction < 1.0:
            raise InputError(f"anomaly_fraction must lie in (0, 1), got {self.anomaly_fraction}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise InputError(f"val_fraction must lie in [0, 1), got {self.val_fraction}")
        unknown = [b for b in self.baselines if b not in classical.BASELINES]
        if unknown:
            raise InputError(f"unknown baseline {unknown[0]!r}; choose from {', '.join(classical.BASELINES)}")


@dataclass(frozen=True)
class SynthDefect:
    """One synth defect folder as eval reads it."""

    folder: Path
    category: str
    defect: str
    samples: tuple[tuple[Path, Path], ...]  # (image, mask) of each accepted sample, in id order
    split_train: tuple[str, ...]
    split_held_out: tuple[str, ...]
    run: RunRecord | None = field(repr=False, default=None)


@dataclass(frozen=True)
class LabelledImage:
    """A real image with its truth: ``label`` 1 anomalous, 0 good; ``mask`` None for good images."""

    path: Path
    mask: Path | None
    label: int
    group: str  # "good" or the defect type
    stem: str


@dataclass
class EvalPlan:
    """Everything eval will read, decided (and checked) before any training."""

    category: str
    train_normals: list[Path]
    shots: list[LabelledImage]
    synth: list[SynthDefect]
    test: list[LabelledImage]
    skipped_defects: list[str]

    def summary(self) -> dict[str, Any]:
        groups: dict[str, int] = {}
        for item in self.test:
            groups[item.group] = groups.get(item.group, 0) + 1
        return {
            "category": self.category,
            "train_normals": len(self.train_normals),
            "real_shots": len(self.shots),
            "synth_samples": {s.defect: len(s.samples) for s in self.synth},
            "test_images": groups,
            "skipped_defects": self.skipped_defects,
        }


# --------------------------------------------------------------------------------------------------- reading


def read_synth(path: str | Path, category: str | None = None, max_samples: int | None = None) -> list[SynthDefect]:
    """Read the synth defect folders below ``path`` (a synth root, category folder or defect folder).

    Args:
        path: the synth output.
        category: keep only this category; required when ``path`` holds several.
        max_samples: at most this many accepted samples per defect type (the first in id order).

    Raises:
        InputError: no synth output, several categories and no ``category``, no split recorded, no sample.
    """
    from anogen.records import find_synth_dirs, read_synth_folder

    folders = find_synth_dirs(path)
    defects: list[SynthDefect] = []
    for folder in folders:
        synth = read_synth_folder(folder)
        cat = safe_name(synth.category)
        defect = safe_name(synth.defect)
        split = synth.split
        if split is None or split.train is None:
            raise InputError(
                f"{folder / 'run.json'}: no few-shot split recorded, so eval cannot tell training images from "
                "test images",
                hint="regenerate with a current `anogen synth` (run.json carries the adapter's split)",
            )
        chosen = synth.samples if max_samples is None else synth.samples[:max_samples]
        samples = tuple((s.image, s.mask) for s in chosen)
        defects.append(
            SynthDefect(
                folder=folder,
                category=cat,
                defect=defect,
                samples=samples,
                split_train=split.train,
                split_held_out=split.held_out or (),
                run=synth.run,
            )
        )
    categories = sorted({d.category for d in defects})
    if category is not None:
        wanted = safe_name(category)
        defects = [d for d in defects if d.category == wanted]
        if not defects:
            raise InputError(f"{path}: no synth output for category {wanted!r} (found: {', '.join(categories)})")
    elif len(categories) > 1:
        raise InputError(
            f"{path} holds synth output for several categories ({', '.join(categories)})", hint="pass --category"
        )
    if not any(d.samples for d in defects):
        raise InputError(f"{path}: no accepted synthetic sample to train on", path=path)
    return defects


def plan_eval(category: Category, synth: Sequence[SynthDefect]) -> EvalPlan:
    """Decide training shots and test images from the data and the split fit recorded; refuse any overlap.

    Raises:
        CompatibilityError: the synth output belongs to another category, or its split names images ``DATA``
            lacks (``--data`` is not the tree ``fit`` trained on).
        InputError: the split is inconsistent, the test set lacks a class, or a test image was used for
            training (by path or by identical file content).
    """
    cat_name = safe_name(category.name)
    defects_by_name = {safe_name(name): d for name, d in category.defects.items()}
    shots: list[LabelledImage] = []
    test: list[LabelledImage] = [LabelledImage(i.path, None, 0, "good", i.path.stem) for i in category.test_normals]
    for sd in synth:
        if sd.category != cat_name:
            raise CompatibilityError(
                f"{sd.folder}: synthetic samples of category {sd.category!r}, but DATA is {cat_name!r}"
            )
        defect = defects_by_name.get(sd.defect)
        if defect is None:
            raise CompatibilityError(f"{sd.folder}: DATA has no defect type {sd.defect!r}", path=category.root)
        train = set(sd.split_train)
        both = sorted(train & set(sd.split_held_out))
        if both:
            raise InputError(
                f"{sd.folder / 'run.json'}: split lists {both[0]!r} as both training and held-out image; "
                "refusing to score an image that was used for training"
            )
        stems = {s.stem for s in defect.samples}
        missing = sorted(train - stems)
        if missing:
            raise CompatibilityError(
                f"{sd.folder / 'run.json'}: the split trained on {missing[0]!r}, which {category.root} lacks",
                hint="pass the --data tree that `anogen fit` was run on",
            )
        for sample in defect.samples:
            item = LabelledImage(
                sample.image.path, sample.mask.path if sample.mask else None, 1, sd.defect, sample.stem
            )
            (shots if sample.stem in train else test).append(item)
    covered = {sd.defect for sd in synth}
    skipped = sorted(set(defects_by_name) - covered)
    plan = EvalPlan(cat_name, [i.path for i in category.train_normals], shots, list(synth), test, skipped)
    refuse_training_images(plan)
    if not any(i.label == 0 for i in test) or not any(i.label == 1 for i in test):
        raise InputError(
            f"{category.root}: the test set needs good images (test/good) and held-out defect images; "
            f"it has {sum(i.label == 0 for i in test)} good and {sum(i.label == 1 for i in test)} defective"
        )
    if not plan.train_normals:
        raise InputError(f"{category.root}: no normal training images (train/good)")
    return plan


def refuse_training_images(plan: EvalPlan) -> None:
    """Raise :class:`InputError` if any test image was used for training, by path or by identical bytes.

    Training images are the normal training images, the few-shot training images (``split.train``) and the
    synthetic samples. Comparing file contents also catches a training image copied under another name.
    """
    used: dict[Path, str] = {}
    for path in plan.train_normals:
        used[path.resolve()] = "a normal training image"
    for item in plan.shots:
        used[item.path.resolve()] = f"a few-shot training image of {item.group!r} (split.train)"
    for sd in plan.synth:
        for image, _ in sd.samples:
            used[image.resolve()] = f"a synthetic training sample of {sd.defect!r}"
    by_hash: dict[str, str] = {}
    for path, why in used.items():
        if path.is_file():
            by_hash.setdefault(sha256_file(path), f"{why}: {path}")
    for item in plan.test:
        resolved = item.path.resolve()
        why = used.get(resolved)
        if why is None and resolved.is_file():
            why = by_hash.get(sha256_file(resolved))
        if why is not None:
            raise InputError(
                f"refusing to score {item.path}: it was used for training ({why})",
                hint="evaluate only on images the split holds out",
            )


# ---------------------------------------------------------------------------------------------------- arrays


def _load_image(path: Path, size: int) -> np.ndarray:
    img = load_rgb(path)
    if img.size != (size, size):
        img = img.resize((size, size), Image.BILINEAR)
    return np.asarray(img, dtype=np.uint8)


def _load_mask(path: Path | None, size: int) -> np.ndarray:
    if path is None:
        return np.zeros((size, size), dtype=bool)
    mask = load_mask(path)
    if mask.shape != (size, size):
        # Nearest neighbour keeps the mask binary; any interpolation would invent boundary values.
        mask = np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize((size, size), Image.NEAREST)) > 0
    return mask


def _split_indices(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, val) index arrays; val gets round(n * fraction) items but never all (and none when n < 2)."""
    order = np.random.default_rng(seed).permutation(n)
    n_val = min(int(round(n * fraction)), n - 1) if n >= 2 else 0
    if fraction > 0 and n >= 2:
        n_val = max(1, n_val)
    return np.sort(order[n_val:]), np.sort(order[:n_val])


@dataclass
class _Data:
    normals: np.ndarray  # (N, H, W, 3) uint8, training part
    val_normals: np.ndarray
    test_images: np.ndarray
    test_masks: np.ndarray
    test_labels: np.ndarray
    test_has_mask: np.ndarray
    test_groups: list[str]


# ------------------------------------------------------------------------------------------------- training


def resolve_device(name: str) -> Any:
    """The torch device for ``--device`` (``auto``, ``cpu``, ``cuda``, ``cuda:N``); an InputError when there is
    no such device here. ``eval --dry-run`` calls it too, so it stops where the real run would."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise InputError(f"--device {name!r} is not a torch device ({exc})") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"--device {name} asked for, but torch sees no CUDA device", hint="use --device auto or cpu")
    return device


def _to_tensor(images: np.ndarray, device: Any) -> Any:
    import torch

    x = torch.from_numpy(np.ascontiguousarray(images)).to(device=device, dtype=torch.float32)
    return x.permute(0, 3, 1, 2) / 127.5 - 1.0


def predict(model: Any, images: np.ndarray, *, device: Any, batch_size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """Anomaly maps (N, H, W) in [0, 1] and image scores (N,) of a trained network."""
    import torch

    from anogen.eval.segnet import image_scores, score_kernel

    maps, scores = [], []
    model.eval()
    with torch.no_grad():
        for start in range(0, len(images), batch_size):
            probs = torch.sigmoid(model(_to_tensor(images[start : start + batch_size], device)))
            maps.append(probs[:, 0].float().cpu().numpy())
            scores.append(image_scores(probs, score_kernel(images.shape[1])).float().cpu().numpy())
    return np.concatenate(maps).astype(np.float64), np.concatenate(scores).astype(np.float64)


def _val_score(model: Any, images: np.ndarray, masks: np.ndarray, labels: np.ndarray, device: Any) -> float:
    """Selection criterion: mean of image AUROC and pixel AP on the synthetic validation set."""
    maps, scores = predict(model, images, device=device)
    return 0.5 * (roc_auc(labels, scores) + average_precision(masks, maps))


def train_segnet(
    normals: np.ndarray,
    sample_anomaly: AnomalySampler,
    config: EvalConfig,
    *,
    method: str,
    validation: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
    progress: ProgressCallback | None = None,
) -> tuple[Any, dict[str, Any]]:
    """Train one :class:`SegNet` on normals plus anomalies, keeping the weights that validate best.

    Args:
        normals (`np.ndarray` of shape `(N, H, W, 3)`, uint8): normal training images.
        sample_anomaly: draws one `(image, mask)` anomaly from a generator.
        config (`EvalConfig`): steps, batch, learning rate, seed.
        method (`str`): name of the method (seeds and progress label).
        validation: `(images, masks, labels)` to select on; ``None`` keeps the last step.

    Returns:
        `(model, selection)`: the network on ``config.device`` in eval mode, and how it was selected.
    """
    import torch

    from anogen.eval.segnet import build_segnet, focal_loss

    device = resolve_device(config.device)
    model = build_segnet(derive_seed(config.seed, "eval", "init"), width=config.width).to(device)
    optimiser = torch.optim.Adam(model.parameters(), lr=config.learning_rate)
    # One batch stream per method, but the same initial weights for all: the comparison is about the data.
    rng = np.random.default_rng(derive_seed(config.seed, "eval", "batches", method))
    val_every = config.val_every or max(1, config.steps // 10)
    size = normals.shape[1]
    best: tuple[float, int, dict[str, Any]] | None = None
    history: list[dict[str, float]] = []
    task = f"eval: train ({method})"
    for step in range(1, config.steps + 1):
        model.train()
        images = np.empty((config.batch_size, size, size, 3), dtype=np.uint8)
        masks = np.zeros((config.batch_size, size, size), dtype=bool)
        for b in range(config.batch_size):
            if rng.random() < config.anomaly_fraction:
                images[b], masks[b] = sample_anomaly(rng)
            else:
                images[b] = normals[int(rng.integers(len(normals)))]
        target = torch.from_numpy(masks).to(device=device, dtype=torch.float32)[:, None]
        loss = focal_loss(model(_to_tensor(images, device)), target)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        if validation is not None and (step % val_every == 0 or step == config.steps):
            score = _val_score(model, *validation, device)
            history.append({"step": step, "val_score": score})
            if best is None or score > best[0]:
                best = (score, step, copy.deepcopy(model.state_dict()))
        report(progress, task, step, config.steps, loss=f"{loss.item():.4f}")
    if best is not None:
        model.load_state_dict(best[2])
        selection = {
            "rule": "best validation score (mean of image AUROC and pixel AP on synthetic validation data)",
            "step": best[1],
            "val_score": best[0],
            "history": history,
        }
    else:
        selection = {"rule": "last step (no synthetic validation data)", "step": config.steps, "val_score": None}
    model.eval()
    return model, selection


# --------------------------------------------------------------------------------------------------- running


def _pool_sampler(images: np.ndarray, masks: np.ndarray) -> AnomalySampler:
    def sample(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        i = int(rng.integers(len(images)))
        return images[i], masks[i]

    return sample


def _classical_sampler(kind: str, normals: np.ndarray) -> AnomalySampler:
    def sample(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        base = normals[int(rng.integers(len(normals)))]
        return classical.make_anomaly(kind, base, rng, normals)

    return sample


def _validation(normals: np.ndarray, images: np.ndarray, masks: np.ndarray) -> tuple[np.ndarray, ...] | None:
    if len(normals) == 0 or len(images) == 0:
        return None
    size = normals.shape[1]
    all_images = np.concatenate([normals, images])
    all_masks = np.concatenate([np.zeros((len(normals), size, size), dtype=bool), masks])
    labels = np.r_[np.zeros(len(normals)), np.ones(len(images))]
    if not all_masks.any():
        return None
    return all_images, all_masks, labels


def run_eval(
    plan: EvalPlan, config: EvalConfig, *, progress: ProgressCallback | None = None
) -> dict[str, Any]:
    """Train and score every method of ``config`` on the plan's data; returns the JSON-ready result.

    The result holds, per method, the seven metrics of :class:`~anogen.eval.metrics.DetectionMetrics`, per
    defect image AUROC and pixel AP, the training set sizes and how the weights were selected.
    """
    config.validate()
    device = resolve_device(config.device)
    size = config.resolution
    started = time.monotonic()
    normals_all = np.stack([_load_image(p, size) for p in plan.train_normals])
    train_idx, val_idx = _split_indices(len(normals_all), config.val_fraction, derive_seed(config.seed, "eval", "val"))
    normals, val_normals = normals_all[train_idx], normals_all[val_idx]
    test_images = np.stack([_load_image(i.path, size) for i in plan.test])
    test_masks = np.stack([_load_mask(i.mask, size) for i in plan.test])
    test_labels = np.array([i.label for i in plan.test])
    # Defect images without a truth mask count for image metrics only.
    has_mask = np.array([i.label == 0 or i.mask is not None for i in plan.test])
    groups = [i.group for i in plan.test]

    methods: dict[str, dict[str, Any]] = {}
    for method in ("anogen", *dict.fromkeys(config.baselines)):
        if method == "anogen":
            pairs = [pair for sd in plan.synth for pair in sd.samples]
            images = np.stack([_load_image(p, size) for p, _ in pairs])
            masks = np.stack([_load_mask(m, size) for _, m in pairs])
            tr, va = _split_indices(len(images), config.val_fraction, derive_seed(config.seed, "eval", "synth-val"))
            sampler = _pool_sampler(images[tr], masks[tr])
            validation = _validation(val_normals, images[va], masks[va])
            train_info = {"normals": len(normals), "anomalies": len(tr), "val_anomalies": len(va)}
        elif method == "none":
            shots = [s for s in plan.shots if s.mask is not None]
            if not shots:
                raise InputError("--baseline none needs the real training shots' masks; DATA has none")
            images = np.stack([_load_image(s.path, size) for s in shots])
            masks = np.stack([_load_mask(s.mask, size) for s in shots])
            sampler = _pool_sampler(images, masks)
            validation = None
            train_info = {"normals": len(normals), "anomalies": len(shots), "val_anomalies": 0}
        else:
            sampler = _classical_sampler(method, normals)
            vrng = np.random.default_rng(derive_seed(config.seed, "eval", "val-anomalies", method))
            made = [classical.make_anomaly(method, v, vrng, normals) for v in val_normals]
            validation = _validation(
                val_normals,
                np.stack([m[0] for m in made]) if made else val_normals[:0],
                np.stack([m[1] for m in made]) if made else np.zeros((0, size, size), dtype=bool),
            )
            train_info = {"normals": len(normals), "anomalies": "generated per step", "val_anomalies": len(made)}
        t0 = time.monotonic()
        model, selection = train_segnet(
            normals, sampler, config, method=method, validation=validation, progress=progress
        )
        maps, scores = predict(model, test_images, device=device)
        result = detection_metrics(
            test_labels, scores, test_masks[has_mask], maps[has_mask], fpr_limit=config.fpr_limit
        )
        per_defect = {}
        for defect in sorted({g for g in groups if g != "good"}):
            keep = np.array([g in ("good", defect) for g in groups])
            pix = keep & has_mask
            per_defect[defect] = {
                "image_auroc": roc_auc(test_labels[keep], scores[keep]),
                "pixel_ap": average_precision(test_masks[pix], maps[pix]) if test_masks[pix].any() else None,
            }
        methods[method] = {
            "metrics": result.to_dict(),
            "per_defect": per_defect,
            "train": train_info,
            "selection": selection,
            "seconds": round(time.monotonic() - t0, 2),
        }
        logger.info("eval %s: %s", method, result.to_dict())
    return {
        "schema_version": EVAL_SCHEMA_VERSION,
        "category": plan.category,
        "config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in config.__dict__.items()},
        "device": str(device),
        "plan": plan.summary(),
        "test": {"good": int((test_labels == 0).sum()), "anomalous": int((test_labels == 1).sum())},
        "methods": methods,
        "model_selection": "synthetic validation data only; the test set is never looked at before scoring",
        "seconds": round(time.monotonic() - started, 2),
    }
