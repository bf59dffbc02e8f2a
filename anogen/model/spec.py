"""What a ``--backbone`` names, found out without loading a weight (no torch, no diffusers).

:func:`describe_backbone` is the one place that decides whether a backbone spec is ``tiny``, ``toy``, a local
diffusers folder or a hub id, checks what can be checked on disk, and reads the component configs (so the
native resolution and the sizes are known). ``load_backbone`` and every ``--dry-run`` go through it, so a dry
run stops on exactly the error the real run would give, before minutes are spent.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from anogen.errors import BackboneError

if TYPE_CHECKING:
    from anogen.config import BackboneConfig, ResolvedConfig

COMPONENTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
WEIGHT_COMPONENTS = ("unet", "vae", "text_encoder")
CONFIG_FILES = {
    "unet": "unet/config.json",
    "vae": "vae/config.json",
    "text_encoder": "text_encoder/config.json",
    "scheduler": "scheduler/scheduler_config.json",
}
NAMES = ("tiny", "toy")
TOY_DIR = Path(__file__).resolve().parent.parent / "assets" / "toy"

BackboneKind = Literal["tiny", "toy", "folder", "hub"]


@dataclass(frozen=True)
class BackboneDescription:
    """A backbone spec, resolved and checked, with its configs when they are on this machine.

    Attributes:
        spec: what the user asked for (``tiny``, ``toy``, a folder or a hub id).
        kind: ``tiny``, ``toy``, ``folder`` or ``hub``.
        folder: where its files are: the toy asset, the local folder, the cached hub snapshot, or ``None``
            (``tiny``, built from configs; a hub id not in the local cache).
        configs: ``unet``, ``vae``, ``text_encoder`` and ``scheduler`` configs, or ``None`` when not local.
    """

    spec: str
    kind: BackboneKind
    folder: Path | None
    configs: dict[str, dict[str, Any]] | None = field(default=None, repr=False)

    @property
    def vae_scale_factor(self) -> int | None:
        if self.configs is None:
            return None
        return 2 ** (len(self.configs["vae"].get("block_out_channels", (1, 1, 1, 1))) - 1)

    @property
    def native_resolution(self) -> int | None:
        """The image size the backbone was built for: the UNet's latent sample size times the VAE's factor."""
        if self.configs is None:
            return None
        size = self.configs["unet"].get("sample_size")
        size = size[0] if isinstance(size, (list, tuple)) else size
        factor = self.vae_scale_factor
        return int(size) * factor if size and factor else None

    @property
    def resolution_multiple(self) -> int | None:
        """Image sizes must be multiples of this: the VAE's factor times the UNet's downsampling."""
        if self.configs is None:
            return None
        down = len(self.configs["unet"].get("block_out_channels", (1, 1, 1, 1))) - 1
        return int(self.vae_scale_factor or 1) * 2**down

    def to_dict(self) -> dict[str, Any]:
        return {
            "spec": self.spec,
            "kind": self.kind,
            "folder": str(self.folder) if self.folder is not None else None,
            "native_resolution": self.native_resolution,
        }


def describe_backbone(config: BackboneConfig) -> BackboneDescription:
    """Resolve a backbone and check it as far as the disk allows, loading no weights.

    Args:
        config (`BackboneConfig`): ``id`` is ``tiny``, ``toy``, a local diffusers folder, or a hub id
            (``org/name``); ``cache_dir`` and ``revision`` say where and which snapshot of a hub id to look for.

    Returns:
        `BackboneDescription`: ``configs`` is ``None`` only for a hub id that is not in the local cache.

    Raises:
        BackboneError: a misspelt name, a folder that does not exist or lacks a component or ``.safetensors``
            weights, a missing toy asset, or (with ``HF_HUB_OFFLINE=1``) a hub id that is not cached.
    """
    spec, cache_dir, revision = config.id, config.cache_dir, config.revision
    if spec == "tiny":
        from anogen.model.small_configs import tiny_configs

        configs = tiny_configs()
        return BackboneDescription(spec, "tiny", None, {k: configs[k] for k in CONFIG_FILES})
    if spec == "toy":
        if not (TOY_DIR / "model_index.json").is_file():
            raise BackboneError(
                f"the toy backbone is missing from this installation ({TOY_DIR})",
                hint="reinstall anogen, or retrain it with `python -m anogen.toy.pretrain` (see docs/toy.md)",
            )
        return BackboneDescription(spec, "toy", TOY_DIR, read_configs(TOY_DIR))
    path = Path(spec).expanduser()
    if path.exists():
        check_folder(path)
        return BackboneDescription(spec, "folder", path, read_configs(path))
    if looks_like_path(spec):
        raise BackboneError(
            f"backbone folder {spec} does not exist",
            hint="pass an existing diffusers folder, a hub id (org/name), toy or tiny",
        )
    if not looks_like_hub_id(spec):
        close = difflib.get_close_matches(spec.lower(), NAMES, n=1, cutoff=0.5)
        raise BackboneError(
            f"backbone {spec!r} is neither tiny, toy, an existing folder nor a hub id (org/name)",
            hint=f"did you mean {close[0]}?" if close else "pass toy, tiny, a diffusers folder or a hub id",
        )
    folder = cached_snapshot(spec, cache_dir=cache_dir, revision=revision)
    if folder is None:
        if hub_offline():
            raise not_cached_error(spec)
        return BackboneDescription(spec, "hub", None, None)
    try:
        configs = read_configs(folder)
    except BackboneError:
        configs = None  # a partial snapshot: the real run completes it from the hub
    return BackboneDescription(spec, "hub", folder, configs)


def looks_like_hub_id(spec: str) -> bool:
    parts = spec.split("/")
    return len(parts) == 2 and all(parts) and not spec.startswith((".", "/", "~"))


def looks_like_path(spec: str) -> bool:
    """A spec written as a path (absolute, ``./``, ``~``, or more than one ``/``): never a hub id."""
    return spec.startswith((".", "/", "~")) or os.path.isabs(spec) or spec.count("/") > 1 or "\\" in spec


def hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes", "on")


def not_cached_error(repo_id: str) -> BackboneError:
    return BackboneError(
        f"backbone {repo_id!r} is not in the local cache and the hub cannot be reached",
        hint="download it once where the network is open (huggingface-cli download "
        f"{repo_id}) and set HF_HUB_OFFLINE=1, or pass --backbone /path/to/local/folder",
    )


def cached_snapshot(repo_id: str, *, cache_dir: str | None, revision: str | None) -> Path | None:
    """The folder of a cached hub snapshot holding the UNet's config, or ``None`` (nothing is downloaded)."""
    try:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(repo_id, "unet/config.json", cache_dir=cache_dir, revision=revision)
    except Exception:  # noqa: BLE001 - a malformed id or cache only means "not local"
        return None
    return Path(found).parent.parent if isinstance(found, str) else None


def check_folder(folder: Path) -> None:
    """The SD-1.x layout checks, on configs and file names only."""
    missing = [c for c in COMPONENTS if not (folder / c).is_dir()]
    if missing:
        raise BackboneError(
            f"{folder} is not an SD-1.x diffusers folder: missing {', '.join(missing)}",
            hint="a backbone folder needs unet/, vae/, text_encoder/, tokenizer/ and scheduler/",
        )
    for component in WEIGHT_COMPONENTS:
        if not list((folder / component).glob("*.safetensors")):
            raise BackboneError(
                f"{folder / component} holds no .safetensors weights (pickled .bin/.ckpt files are never loaded)",
                hint="convert the weights to safetensors first",
            )
    configs = read_configs(folder)
    unet_config, te_config = configs["unet"], configs["text_encoder"]
    if unet_config.get("_class_name", "UNet2DConditionModel") != "UNet2DConditionModel":
        raise BackboneError(
            f"{folder}: unet is a {unet_config.get('_class_name')}, anogen needs a UNet2DConditionModel (SD-1.x)"
        )
    if unet_config.get("cross_attention_dim") != te_config.get("hidden_size"):
        raise BackboneError(
            f"{folder}: the UNet's cross_attention_dim ({unet_config.get('cross_attention_dim')}) differs from the "
            f"text encoder's hidden_size ({te_config.get('hidden_size')}); this is not an SD-1.x layout"
        )


def read_configs(folder: Path) -> dict[str, dict[str, Any]]:
    configs = {}
    for name, rel in CONFIG_FILES.items():
        path = folder / rel
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise BackboneError(f"{path}: cannot read ({exc.strerror or exc})", path=path) from exc
        except ValueError as exc:
            raise BackboneError(f"{path}: not valid JSON ({exc})", path=path) from exc
        if not isinstance(data, dict):
            raise BackboneError(f"{path}: expected a JSON object", path=path)
        configs[name] = data
    return configs


def resolution_for_backbone(
    config: ResolvedConfig, *, resolution_given: bool = False, config_file: Path | None = None
) -> tuple[ResolvedConfig, str | None]:
    """``config`` at the resolution of the backbone it names, by :func:`follow_native_resolution`'s rule.

    The one place ``fit`` and ``demo`` decide the training resolution: the preset's backbone keeps the preset's
    resolution (nothing is described); another backbone trains at its native size unless the user chose one.

    Args:
        config (`ResolvedConfig`): the resolved preset/config/flags.
        resolution_given (`bool`): ``--resolution`` was passed.
        config_file (`Path`, *optional*): the ``--config`` file; a ``train.resolution`` in it is a choice too.

    Returns:
        `(ResolvedConfig, str | None)`: the config to train with and a one-line notice (``None``: unchanged).
    """
    from anogen.config import BackboneConfig, load_preset_raw, read_yaml_mapping

    if config_file is not None and "resolution" in (read_yaml_mapping(config_file).get("train") or {}):
        resolution_given = True
    # The backbone the preset names (a lookup, not a resolve: the run's config is already resolved).
    preset_backbone = None
    if config.preset:
        preset_backbone = (load_preset_raw(config.preset).get("backbone") or {}).get("id", BackboneConfig.id)
    if resolution_given or config.backbone.id == preset_backbone:
        return config, None  # nothing to decide; the backbone is described (and checked) by the plan
    described = describe_backbone(config.backbone)
    return follow_native_resolution(
        config, described, preset_backbone=preset_backbone, resolution_given=resolution_given
    )


def follow_native_resolution(
    config: ResolvedConfig,
    description: BackboneDescription,
    *,
    preset_backbone: str | None,
    resolution_given: bool,
) -> tuple[ResolvedConfig, str | None]:
    """Train at the backbone's native size when the preset's resolution was meant for another backbone.

    A preset's ``train.resolution`` belongs to its own backbone (512 px for SD-1.5); with ``--backbone toy`` or
    ``tiny`` it would train a small model at 512 px, for many times the memory and time and no gain. So unless the
    user set the resolution (``--resolution`` or the config file), a backbone other than the preset's trains at
    its native size, and the returned line says so. Unchanged when the native size is unknown (a hub id that is
    not cached) or already equal.

    Args:
        config (`ResolvedConfig`): the resolved preset/config/flags.
        description (`BackboneDescription`): :func:`describe_backbone` of ``config.backbone.id``.
        preset_backbone (`str`, *optional*): the backbone the preset names (``None``: no preset).
        resolution_given (`bool`): the user chose ``train.resolution`` explicitly.

    Returns:
        `(ResolvedConfig, str | None)`: the config to train with and a one-line notice (``None``: unchanged).
    """
    native = description.native_resolution
    current = config.train.resolution
    if resolution_given or native is None or native == current or config.backbone.id == preset_backbone:
        return config, None
    train = dataclasses.replace(config.train, resolution=native)
    source = f"preset {config.preset}'s" if config.preset else "the default"
    made_for = f" (made for {preset_backbone})" if preset_backbone else ""
    cost = " is not its size"
    if current > native:
        cost = f" would cost up to {(current / native) ** 2:.0f}x the memory and time"
    notice = (
        f"training at {native} px, the native size of backbone {config.backbone.id}: {source} {current} px"
        f"{made_for}{cost}; pass --resolution to choose"
    )
    return dataclasses.replace(config, train=train), notice
