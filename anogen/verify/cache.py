"""The normal model on disk: ``normal_model.safetensors`` + ``normal_model.json``, keyed by what it was built from.

The caller chooses the folder (synth will keep it in its own output: adapter folders may be read-only). The JSON
holds the key: every input image's sha256, the backbone's content hash, the resolution and the config fields that
change the model (:data:`anogen.verify.config.MODEL_FIELDS`). :func:`load_or_build_normal_model` rebuilds when any of
them differs or the weights file does not match its recorded hash. The same inputs give the same bytes.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from anogen.errors import AnogenError, InputError
from anogen.io import (
    SCHEMA_VERSION,
    canonical_safetensors,
    load_rgb,
    sha256_file,
    write_bytes_atomic,
    write_json_atomic,
)
from anogen.progress import ProgressCallback
from anogen.verify.config import VerifyConfig
from anogen.verify.normal import NormalModel, build_normal_model

if TYPE_CHECKING:
    from anogen.model.backbone import Backbone

logger = logging.getLogger(__name__)

WEIGHTS = "normal_model.safetensors"
META = "normal_model.json"
# Bump when the way a model is built changes, so old caches are rebuilt instead of trusted.
METHOD_VERSION = 1


def cache_key(backbone_hash: str, resolution: int, config: VerifyConfig, inputs: Sequence[dict[str, str]]) -> dict:
    """Everything a cached normal model depends on, JSON-ready."""
    return {
        "method_version": METHOD_VERSION,
        "backbone_hash": backbone_hash,
        "resolution": int(resolution),
        "config": config.model_key(),
        "inputs": [dict(item) for item in inputs],
    }


def save_normal_model(model: NormalModel, folder: str | Path) -> Path:
    """Write the model into ``folder`` (atomically, weights first, so a torn write is never taken for valid)."""
    from safetensors.torch import save

    folder = Path(folder)
    tensors = {"bank": model.bank.contiguous(), "holdout_max": model.holdout_max.contiguous()}
    data = canonical_safetensors(save(tensors, metadata={"format": "anogen-normal-model"}))
    write_bytes_atomic(folder / WEIGHTS, data)
    meta = {
        "schema_version": SCHEMA_VERSION,
        "key": cache_key(model.backbone_hash, model.resolution, model.config, model.inputs),
        "weights_sha256": sha256_file(folder / WEIGHTS),
        "config": model.config.to_dict(),
        "blocks": list(model.blocks),
        "stride": int(model.stride),
        "position_scale": float(model.position_scale),
        "bank_size": int(model.bank.shape[0]),
        "feature_dim": int(model.bank.shape[1]),
        "holdout": list(model.holdout_names),
    }
    write_json_atomic(folder / META, meta)
    return folder


def load_normal_model(folder: str | Path, backbone: Backbone, config: VerifyConfig | None = None) -> NormalModel:
    """Read a saved model and attach the backbone's VAE.

    Args:
        folder: where :func:`save_normal_model` wrote it.
        backbone (`Backbone`): must be the backbone it was built with (checked by content hash).
        config (`VerifyConfig`, *optional*): query-time settings (thresholds, blur); the model fields must match
            the saved ones. Default: the saved config.
    """
    import json

    from safetensors.torch import load_file

    folder = Path(folder)
    try:
        meta = json.loads((folder / META).read_text())
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot read the normal model's {META}: {exc}", path=folder / META) from exc
    try:
        saved = VerifyConfig(**meta["config"])
    except TypeError as exc:
        # Written by another anogen version whose config has other fields.
        raise InputError(f"the normal model's config does not match this anogen: {exc}", path=folder / META,
                         hint="rebuild it with load_or_build_normal_model") from exc
    config = config or saved
    if config.model_key() != saved.model_key():
        raise InputError("the normal model was built with other settings", path=folder / META,
                         hint="rebuild it with load_or_build_normal_model")
    if meta["key"]["backbone_hash"] != backbone.content_hash:
        raise InputError("the normal model was built with another backbone", path=folder / META)
    if sha256_file(folder / WEIGHTS) != meta["weights_sha256"]:
        raise AnogenError("the normal model's weights do not match their recorded hash", path=folder / WEIGHTS)
    tensors = load_file(str(folder / WEIGHTS), device="cpu")
    return NormalModel(
        bank=tensors["bank"],
        holdout_max=tensors["holdout_max"],
        config=config,
        blocks=list(meta["blocks"]),
        resolution=int(meta["key"]["resolution"]),
        stride=int(meta["stride"]),
        position_scale=float(meta["position_scale"]),
        backbone_hash=meta["key"]["backbone_hash"],
        inputs=list(meta["key"]["inputs"]),
        holdout_names=list(meta["holdout"]),
        vae=backbone.vae,
    )


def _cached_key(folder: Path) -> Any:
    import json

    try:
        meta = json.loads((folder / META).read_text())
        if sha256_file(folder / WEIGHTS) != meta.get("weights_sha256"):
            return None
        return meta.get("key")
    except (OSError, ValueError):
        return None


def read_normal_image(path: str | Path, resolution: int) -> np.ndarray:
    """A normal image as synth's models see it: RGB, resized (bicubic, as fit resizes) to a square side."""
    image = load_rgb(path)
    if image.size != (resolution, resolution):
        image = image.resize((resolution, resolution), Image.BICUBIC)
    return np.asarray(image, dtype=np.uint8)


def load_or_build_normal_model(
    folder: str | Path,
    image_paths: Sequence[str | Path],
    backbone: Backbone,
    resolution: int,
    config: VerifyConfig | None = None,
    *,
    progress: ProgressCallback | None = None,
) -> tuple[NormalModel, bool]:
    """The cached normal model of these normals, rebuilt (and saved) when its inputs changed.

    Args:
        folder: the cache folder (created if needed).
        image_paths: the category's ``train/good`` files, in a stable order (e.g. natural filename order).
        backbone (`Backbone`): the backbone whose VAE made (or will make) the samples.
        resolution (`int`): the samples' side in pixels.
        config (`VerifyConfig`, *optional*): parameters.
        progress: optional progress callback.

    Returns:
        `(NormalModel, bool)`: the model and whether it was built now (False: read from the cache).
    """
    config = config or VerifyConfig()
    folder = Path(folder)
    paths = [Path(p) for p in image_paths]
    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise InputError("normal image not found", path=missing[0])
    inputs = [{"name": p.name, "sha256": sha256_file(p)} for p in paths]
    if _cached_key(folder) == cache_key(backbone.content_hash, resolution, config, inputs):
        logger.info("normal model: using the cache in %s", folder)
        return load_normal_model(folder, backbone, config), False
    logger.info("normal model: building from %d normal images into %s", len(paths), folder)
    images = [read_normal_image(p, resolution) for p in paths]
    model = build_normal_model(backbone, images, config, names=[i["name"] for i in inputs],
                               hashes=[i["sha256"] for i in inputs], progress=progress)
    save_normal_model(model, folder)
    return model, True
