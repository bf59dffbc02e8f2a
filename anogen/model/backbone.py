"""Backbone loading: a hub id, a local diffusers folder, the random ``tiny`` model or the shipped ``toy`` one.

Every backbone has the SD-1.x layout (``unet/``, ``vae/``, ``text_encoder/``, ``tokenizer/``, ``scheduler/``)
and the same classes. Nothing downstream may assume SD-1.5's numbers: latent channels, the autoencoder's
downsampling factor and the native resolution are read from the loaded configs (see :class:`Backbone`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from anogen.errors import BackboneError
from anogen.io import sha256_file
from anogen.model.small_configs import tiny_configs
from anogen.model.spec import (
    COMPONENTS,
    TOY_DIR,
    WEIGHT_COMPONENTS,
    check_folder,
    describe_backbone,
    hub_offline,
    not_cached_error,
)

if TYPE_CHECKING:
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    from anogen.config import BackboneConfig

logger = logging.getLogger(__name__)

# COMPONENTS, WEIGHT_COMPONENTS and TOY_DIR live in anogen.model.spec (no torch) and are re-exported here.
__all__ = [
    "COMPONENTS", "TOY_DIR", "WEIGHT_COMPONENTS", "Backbone", "build_tiny", "folder_hash", "load_backbone",
    "load_folder", "make_scheduler", "module_hash", "save_backbone",
]
# Files of a hub snapshot that loading needs; .bin/.ckpt/.pt pickles are never fetched nor read.
HUB_PATTERNS = ["model_index.json", "*/config.json", "*/*.safetensors", "tokenizer/*", "scheduler/*"]


@dataclass
class Backbone:
    """A loaded base model and the numbers read from its configs.

    Attributes:
        unet, vae, text_encoder, tokenizer: the diffusers / transformers components (frozen).
        scheduler_config: the training scheduler's config (a dict; schedulers are built per use).
        source: what the user asked for (``tiny``, ``toy``, a folder or a hub id).
        content_hash: sha256 over the weights, so adapters can refuse another backbone.
    """

    unet: UNet2DConditionModel
    vae: AutoencoderKL
    text_encoder: CLIPTextModel
    tokenizer: CLIPTokenizer
    scheduler_config: dict[str, Any]
    source: str
    content_hash: str

    @property
    def latent_channels(self) -> int:
        return int(self.unet.config.in_channels)

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def resolution(self) -> int:
        """The native image size: the UNet's latent sample size times the autoencoder's factor."""
        size = self.unet.config.sample_size
        size = size[0] if isinstance(size, (list, tuple)) else size
        return int(size) * self.vae_scale_factor

    @property
    def scaling_factor(self) -> float:
        return float(getattr(self.vae.config, "scaling_factor", 1.0) or 1.0)

    @property
    def shift_factor(self) -> float:
        return float(getattr(self.vae.config, "shift_factor", None) or 0.0)

    def to(self, device: str | torch.device | None = None, dtype: torch.dtype | None = None) -> Backbone:
        import torch

        for module in (self.unet, self.vae, self.text_encoder):
            current = next(module.parameters())
            same_device = device is None or current.device == torch.device(device)
            same_dtype = dtype is None or current.dtype == dtype
            # diffusers warns on every dtype cast; a no-op move should stay silent.
            if not (same_device and same_dtype):
                module.to(device=device, dtype=dtype)
        return self

    def make_scheduler(self, name: str | None = None) -> Any:
        """A fresh scheduler from this backbone's config: the training DDPM one, or a sampler by name."""
        return make_scheduler(self.scheduler_config, name)


def make_scheduler(scheduler_config: dict[str, Any], name: str | None = None) -> Any:
    from diffusers import (
        DDIMScheduler,
        DDPMScheduler,
        DPMSolverMultistepScheduler,
        EulerDiscreteScheduler,
        PNDMScheduler,
    )

    classes = {
        None: DDPMScheduler,
        "ddpm": DDPMScheduler,
        "ddim": DDIMScheduler,
        "pndm": PNDMScheduler,
        "euler": EulerDiscreteScheduler,
        "dpmsolver++": DPMSolverMultistepScheduler,
        "sde-dpmsolver++": DPMSolverMultistepScheduler,
    }
    if name not in classes:
        raise BackboneError(f"unknown sampler {name!r} (choose from {', '.join(k for k in classes if k)})")
    config = {k: v for k, v in scheduler_config.items() if not k.startswith("_")}
    if name in ("dpmsolver++", "sde-dpmsolver++"):
        config["algorithm_type"] = name
    return classes[name].from_config(config)


# ------------------------------------------------------------------------------------------------ tiny


def build_tiny(seed: int = 0, resolution: int = 32) -> Backbone:
    """The random test backbone, built from configs offline; the same seed gives the same weights."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from anogen.model.tokenizer import build_char_tokenizer

    configs = tiny_configs(resolution)
    generator_state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(**configs["unet"])
        torch.manual_seed(seed + 1)
        vae = AutoencoderKL(**configs["vae"])
        torch.manual_seed(seed + 2)
        text_encoder = CLIPTextModel(CLIPTextConfig(**configs["text_encoder"]))
    finally:
        torch.random.set_rng_state(generator_state)
    # The tokenizer reads its vocabulary once at construction, so its files need not outlive this call.
    with tempfile.TemporaryDirectory(prefix="anogen-tok-") as folder:
        tokenizer = build_char_tokenizer(folder)
    backbone = Backbone(
        unet=unet,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        scheduler_config=configs["scheduler"],
        source="tiny",
        content_hash="",
    )
    _freeze(backbone)
    backbone.content_hash = module_hash(backbone)
    return backbone


# --------------------------------------------------------------------------------------------- loading


def load_backbone(
    config: BackboneConfig,
    *,
    device: str | None = None,
    dtype: torch.dtype | None = None,
) -> Backbone:
    """Load the backbone a :class:`~anogen.config.BackboneConfig` describes: a name, a folder or a hub id.

    Args:
        config (`BackboneConfig`): ``id`` (``tiny``, ``toy``, a local diffusers folder, or a hub id
            ``org/name``), ``cache_dir`` (hub cache; ``HF_HUB_OFFLINE=1`` makes a missing snapshot an error
            instead of a download), ``revision`` (hub revision) and ``seed`` (of ``tiny``).
        device, dtype: where to put the weights.
    """
    # One description for the dry run and the real run: both stop on the same error before any weight is read.
    description = describe_backbone(config)
    if description.kind == "tiny":
        backbone = build_tiny(config.seed)
    elif description.kind == "hub":
        folder = _snapshot(config.id, cache_dir=config.cache_dir, revision=config.revision)
        backbone = load_folder(folder, source=config.id)
    else:
        assert description.folder is not None
        backbone = load_folder(description.folder, source=str(config.id))
    if device is not None or dtype is not None:
        backbone.to(device=device, dtype=dtype)
    return backbone


def _snapshot(repo_id: str, *, cache_dir: str | None, revision: str | None) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError

    offline = hub_offline()
    try:
        path = snapshot_download(
            repo_id,
            revision=revision,
            cache_dir=cache_dir,
            allow_patterns=HUB_PATTERNS,
            local_files_only=offline,
        )
    except LocalEntryNotFoundError as exc:
        raise not_cached_error(repo_id) from exc
    except RepositoryNotFoundError as exc:
        raise BackboneError(f"no model {repo_id!r} on the hub (or it is private)") from exc
    except (HfHubHTTPError, OSError) as exc:
        raise BackboneError(
            f"cannot fetch backbone {repo_id!r}: {exc}",
            hint="work offline with a local diffusers folder: --backbone /path/to/folder",
        ) from exc
    return Path(path)


@contextlib.contextmanager
def _quiet_loading() -> Iterator[None]:
    """Hide the libraries' per-file loading bars: the CLI draws its own progress, and CI logs stay readable."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    shown = (transformers_logging.is_progress_bar_enabled(), diffusers_logging.is_progress_bar_enabled())
    transformers_logging.disable_progress_bar()
    diffusers_logging.disable_progress_bar()
    try:
        yield
    finally:
        if shown[0]:
            transformers_logging.enable_progress_bar()
        if shown[1]:
            diffusers_logging.enable_progress_bar()


def load_folder(folder: Path, *, source: str) -> Backbone:
    """Load a diffusers folder with the SD-1.x layout, weights from ``.safetensors`` only."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    folder = Path(folder)
    check_folder(folder)
    try:
        with _quiet_loading():
            unet = UNet2DConditionModel.from_pretrained(folder, subfolder="unet", use_safetensors=True)
            vae = AutoencoderKL.from_pretrained(folder, subfolder="vae", use_safetensors=True)
            # transformers 5 keeps the stored dtype by default; load fp32 like diffusers does (fp16 files included).
            text_encoder = CLIPTextModel.from_pretrained(
                folder, subfolder="text_encoder", use_safetensors=True, dtype=torch.float32
            )
            tokenizer = CLIPTokenizer.from_pretrained(folder, subfolder="tokenizer")
    except (OSError, ValueError) as exc:
        raise BackboneError(f"cannot load backbone from {folder}: {exc}") from exc
    scheduler_config = json.loads((folder / "scheduler" / "scheduler_config.json").read_text())
    backbone = Backbone(
        unet=unet,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        scheduler_config=scheduler_config,
        source=source,
        content_hash=folder_hash(folder),
    )
    _freeze(backbone)
    return backbone


def save_backbone(backbone: Backbone, folder: str | Path, *, fp16: bool = False) -> Path:
    """Write a backbone as an ordinary diffusers folder (loadable by ``StableDiffusionPipeline`` too)."""
    import torch

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    variant_dtype = torch.float16 if fp16 else None
    for name in WEIGHT_COMPONENTS:
        module = getattr(backbone, name)
        original = next(module.parameters()).dtype
        if variant_dtype is not None:
            module.to(variant_dtype)
        try:
            module.save_pretrained(folder / name, safe_serialization=True)
        finally:
            module.to(original)
    backbone.tokenizer.save_pretrained(folder / "tokenizer")
    scheduler = make_scheduler(backbone.scheduler_config, "pndm")
    scheduler.save_pretrained(folder / "scheduler")
    model_index = {
        "_class_name": "StableDiffusionPipeline",
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "scheduler": ["diffusers", "PNDMScheduler"],
        "safety_checker": [None, None],
        "feature_extractor": [None, None],
        "requires_safety_checker": False,
    }
    (folder / "model_index.json").write_text(json.dumps(model_index, indent=2))
    return folder


def _freeze(backbone: Backbone) -> None:
    for module in (backbone.unet, backbone.vae, backbone.text_encoder):
        module.requires_grad_(False)
        module.eval()


def module_hash(backbone: Backbone) -> str:
    """sha256 over every weight tensor of the three networks, in name order (for in-memory backbones)."""
    digest = hashlib.sha256()
    for name in WEIGHT_COMPONENTS:
        state = getattr(backbone, name).state_dict()
        for key in sorted(state):
            digest.update(f"{name}.{key}".encode())
            digest.update(state[key].detach().to("cpu").contiguous().numpy().tobytes())
    return digest.hexdigest()


def folder_hash(folder: Path) -> str:
    """sha256 over the weight and config files of a backbone folder (paths and contents)."""
    digest = hashlib.sha256()
    for component in COMPONENTS:
        for path in sorted((folder / component).glob("*")):
            if path.suffix in (".safetensors", ".json", ".txt"):
                digest.update(f"{component}/{path.name}".encode())
                digest.update(_cached_file_hash(path).encode())
    return digest.hexdigest()


def _cached_file_hash(path: Path) -> str:
    """Hash a file once per (path, size, mtime): SD-1.5's weights take seconds to hash."""
    stat = path.stat()
    cache_root = Path(os.environ.get("ANOGEN_CACHE", Path.home() / ".cache" / "anogen"))
    cache_file = cache_root / "file-hashes.json"
    key = f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"
    try:
        cache = json.loads(cache_file.read_text())
    except (OSError, ValueError):
        cache = {}
    if key in cache:
        return cache[key]
    value = sha256_file(path)
    if stat.st_size > (16 << 20):
        cache[key] = value
        try:
            cache_root.mkdir(parents=True, exist_ok=True)
            from anogen.io import write_json_atomic

            write_json_atomic(cache_file, cache)
        except OSError:
            logger.debug("cannot write the hash cache %s", cache_file)
    return value
