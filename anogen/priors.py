"""Priors of a category: object masks, background images I_b, defect-location maps and mask-shape statistics.

``anogen prior`` writes them once per category; ``fit`` and ``synth`` read them back (BCM takes the background
images, the plausibility check takes the object masks). Everything here is training-free and offline.

Object masks come from a **background colour model taken from the image border**: the border strip is
median-filtered and clustered into a few colours (k-means, deterministic initialisation); clusters holding
only a small share of the border, or confined to one side of it (an object that touches the edge), are
dropped; every pixel's Mahalanobis distance to the nearest remaining cluster is thresholded (a fixed number
of the background's standard deviations, then raised to halfway to the object's typical distance so that
blurred edges are cut in their middle); the binary map is cleaned by opening and closing, its holes are
filled and its largest component kept.
Object masks are estimated for defect images too, so that defect locations can be expressed in the object's
frame (its bounding box), whatever the object's position in each photo.

Layout of ``DIR/<category>/`` (see docs/priors.md)::

    prior.json                          schema_version, kind, method, params, source, one row per image
    object/<split>/<stem>.png           0/255 object mask at the image's size (object categories only)
    background/<split>/<stem>.png       the normal image with the object blacked out (object categories only)
    location/<defect>.npy, .png         64x64 map: share of defect masks covering each cell of the object box
    location.npy, location.png          the same over every defect type
    shapes.json                         mask-shape statistics per defect type
    preview.png                         object masks over normal images (object categories only)
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image, UnidentifiedImageError

from anogen.data.model import Category, CategoryKind, ImageInfo
from anogen.errors import DataError, InputError
from anogen.io import (
    load_mask,
    load_rgb,
    mask_to_png_array,
    natural_key,
    safe_name,
    save_png_atomic,
    sha256_file,
    write_json_atomic,
)
from anogen.progress import ProgressCallback, report

logger = logging.getLogger(__name__)

PRIOR_SCHEMA_VERSION = 1
METHOD = "border-colour-model"
Role = Literal["train", "test", "defect"]
KindSource = Literal["flag", "dataset", "preset", "guessed"]


@dataclass(frozen=True)
class PriorParams:
    """Parameters of object-mask extraction and of the location statistics.

    Args:
        work_size (`int`, defaults to 256): masks are computed with the long side at most this many pixels
            (larger images are downscaled, the mask upsampled back); keeps 1024 px photos fast.
        border (`float`, defaults to 0.04): width of the border strip that defines the background, as a
            fraction of the short side (at least 2 px).
        median (`int`, defaults to 3): median filter size in working pixels before the colour distance
            (suppresses sensor noise and fine background texture, keeps edges in place); 0 or 1 disables it.
        smooth (`float`, defaults to 0.0): an extra Gaussian sigma in working pixels (0 disables it).
        clusters (`int`, defaults to 3): background colours (k-means clusters over the border pixels).
        min_cluster_share (`float`, defaults to 0.1): clusters with less of the border than this are taken
            to be object pixels touching the edge and are dropped.
        noise_floor (`float`, defaults to 0.02): standard deviation added to every cluster (0-1 scale), so
            that a perfectly flat background still has a finite distance scale.
        threshold (`float | str`, defaults to 4.0): distance threshold in background standard deviations
            (a Gaussian background passes 4 sigma on about 1 pixel in 10^3; opening removes those);
            ``"otsu"`` picks it per image by Otsu, clamped to [``min_threshold``, ``max_threshold``] (measured
            worse: a small, very distinct part, e.g. a stain, pulls Otsu above the object's body).
        edge_level (`float`, defaults to 0.5): the threshold is raised to this share of the object's median
            distance, which puts the edge of a blurred object halfway between background and object; 0
            keeps the noise-floor threshold alone.
        min_threshold (`float`, defaults to 3.0): lowest threshold Otsu may pick.
        max_threshold (`float`, defaults to 8.0): highest threshold Otsu may pick.
        morph_radius (`float`, defaults to 0.03): opening/closing radius as a fraction of the short side
            (at least 1 px).
        refine (`bool`, defaults to True): a second pass whose background model comes from every pixel well
            outside the first mask (not only the border), which detaches background patches of a colour the
            border lacks.
        fill_holes (`bool`, defaults to True): fill holes (object parts coloured like the background).
        largest_component (`bool`, defaults to True): keep only the largest connected component.
        min_object_fraction (`float`, defaults to 0.005): a smaller object means "none found"; the mask
            then falls back to the whole image (nothing is ever rejected for lying off it) with a warning.
        location_size (`int`, defaults to 64): side of the location map.
        preview_count (`int`, defaults to 16): normal images shown in ``preview.png``.
    """

    work_size: int = 256
    border: float = 0.04
    median: int = 3
    smooth: float = 0.0
    clusters: int = 3
    min_cluster_share: float = 0.1
    noise_floor: float = 0.02
    threshold: float | Literal["otsu"] = 4.0
    min_threshold: float = 3.0
    max_threshold: float = 8.0
    edge_level: float = 0.5
    morph_radius: float = 0.03
    fill_holes: bool = True
    refine: bool = True
    largest_component: bool = True
    min_object_fraction: float = 0.005
    location_size: int = 64
    preview_count: int = 16

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def digest(self) -> str:
        """Hash of the parameters and method name; part of every cache key."""
        text = json.dumps({"method": METHOD, "params": self.to_dict()}, sort_keys=True)
        return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


# ----------------------------------------------------------------------------------------- object masks


def estimate_object_mask(image: np.ndarray | Image.Image, params: PriorParams | None = None) -> np.ndarray:
    """Segment the object from its background with a colour model of the image border.

    Args:
        image (`np.ndarray | PIL.Image.Image`): an RGB image, uint8 ``(H, W, 3)`` or ``(H, W)`` grey.
        params (`PriorParams`, *optional*): extraction parameters (defaults when ``None``).

    Returns:
        `np.ndarray`: boolean ``(H, W)`` object mask. All False when no object stands out from the border
        (a texture, or an object of the background's colour); :func:`build_prior` then falls back.
    """
    from scipy import ndimage

    params = params or PriorParams()
    rgb = _as_rgb_array(image)
    height, width = rgb.shape[:2]
    work = _downscale(rgb, params.work_size)
    h, w = work.shape[:2]
    pixels = work.astype(np.float64) / 255.0
    if params.median > 1:
        # A median filter removes sensor noise and fine background texture but keeps edges where they are
        # (a Gaussian moves a low threshold's edge outwards).
        pixels = ndimage.median_filter(pixels, size=(params.median, params.median, 1), mode="nearest")
    if params.smooth > 0:
        pixels = ndimage.gaussian_filter(pixels, sigma=(params.smooth, params.smooth, 0), mode="nearest")

    band = max(2, int(round(params.border * min(h, w))))
    sides = np.zeros((4, h, w), dtype=bool)
    sides[0, :band, :] = sides[1, -band:, :] = sides[2, :, :band] = sides[3, :, -band:] = True
    ring = sides.any(axis=0)
    distance = _background_distance(pixels, pixels[ring], sides[:, ring], params)

    radius = max(1, int(round(params.morph_radius * min(h, w))))
    binary = _segment(distance, params, radius)
    if params.refine and binary.any() and not binary.all():
        # Second pass: a background model from every pixel well away from the first mask, not only the border,
        # so that background patches whose colour the border lacks stop being glued to the object.
        outside = ~_dilate(binary, 2 * radius)
        if outside.mean() >= 0.05:
            samples = pixels[outside]
            stride = max(1, len(samples) // 20000)
            distance = _background_distance(pixels, samples[::stride], None, params)
            refined = _segment(distance, params, radius)
            if refined.any():
                binary = refined

    if (h, w) != (height, width):
        # Bilinear upsampling of the 0/1 map then a 0.5 cut gives smooth edges instead of blocks.
        up = Image.fromarray(binary.astype(np.float32), mode="F").resize((width, height), Image.BILINEAR)
        binary = np.asarray(up) >= 0.5
    return binary


def _segment(distance: np.ndarray, params: PriorParams, radius: int) -> np.ndarray:
    """Distance map -> cleaned binary object mask (threshold, edge level, opening, closing, holes, largest)."""
    from scipy import ndimage

    threshold = params.threshold
    if threshold == "otsu":
        threshold = min(max(_otsu(distance), params.min_threshold), params.max_threshold)
    binary = distance > threshold
    if params.edge_level > 0 and binary.any():
        # A threshold near the noise floor cuts a blurred edge close to the background side, which grows the
        # mask by part of the blur width; cutting at a share of the object's typical distance (0.5 = halfway
        # between background and object) puts the edge where the blur is centred.
        core = _erode(_largest_component(binary), radius)
        if core.any():
            threshold = max(float(threshold), params.edge_level * float(np.median(distance[core])))
            binary = distance > threshold
    # Opening removes specks, closing bridges thin cuts (a scratch across the rim) so that holes can be filled.
    binary = _dilate(_erode(binary, radius), radius)
    binary = _erode(_dilate(binary, radius), radius)
    if params.fill_holes:
        binary = ndimage.binary_fill_holes(binary)
    if params.largest_component:
        binary = _largest_component(binary)
    return binary


def _as_rgb_array(image: np.ndarray | Image.Image) -> np.ndarray:
    if isinstance(image, Image.Image):
        image = np.asarray(image.convert("RGB"))
    arr = np.asarray(image)
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=-1)
    if arr.ndim != 3 or arr.shape[-1] < 3:
        raise InputError(f"expected an (H, W, 3) or (H, W) image, got shape {arr.shape}")
    arr = arr[..., :3]
    if arr.dtype != np.uint8:
        arr = np.clip(arr, 0, 255).astype(np.uint8)
    return arr


def _downscale(rgb: np.ndarray, work_size: int) -> np.ndarray:
    height, width = rgb.shape[:2]
    long_side = max(height, width)
    if work_size <= 0 or long_side <= work_size:
        return rgb
    scale = work_size / long_side
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return np.asarray(Image.fromarray(rgb).resize(size, Image.BOX))


def _background_distance(
    pixels: np.ndarray, border: np.ndarray, border_sides: np.ndarray | None, params: PriorParams
) -> np.ndarray:
    """Per-pixel Mahalanobis distance to the nearest background colour cluster, in standard deviations.

    ``border_sides`` (4, n) says which image side (top, bottom, left, right) each border pixel lies on.
    A cluster is background if it holds at least ``min_cluster_share`` of the border and appears on at least
    two sides: an object that touches one edge forms a cluster confined to that side, which is dropped.
    """
    centres, labels = _kmeans(border, params.clusters)
    floor = params.noise_floor**2 * np.eye(3)
    flat = pixels.reshape(-1, 3)
    best = np.full(flat.shape[0], np.inf)
    shares = np.bincount(labels, minlength=len(centres)) / max(1, len(labels))
    keep = []
    for k in range(len(centres)):
        if border_sides is None:  # samples from the whole background (second pass): no side rule
            on_sides = 4
        else:
            on_sides = sum((labels[side] == k).mean() >= 0.1 for side in border_sides if side.any())
        if shares[k] >= params.min_cluster_share and (on_sides >= 2 or shares[k] >= 0.5):
            keep.append(k)
    if not keep:  # no cluster qualifies: the border is too varied to say; trust the largest one
        keep = [int(np.argmax(shares))]
    for k in keep:
        members = border[labels == k]
        mean = members.mean(axis=0)
        cov = np.cov(members, rowvar=False) if len(members) > 3 else np.zeros((3, 3))
        inv = np.linalg.inv(cov + floor)
        diff = flat - mean
        dist2 = ((diff @ inv) * diff).sum(axis=1)
        np.minimum(best, dist2, out=best)
    return np.sqrt(np.maximum(best, 0.0)).reshape(pixels.shape[:2])


def _kmeans(points: np.ndarray, k: int, iterations: int = 12) -> tuple[np.ndarray, np.ndarray]:
    """Plain Lloyd k-means with centres initialised at luminance quantiles: deterministic, no RNG."""
    k = max(1, min(k, len(points)))
    luminance = points @ np.array([0.299, 0.587, 0.114])
    order = np.argsort(luminance, kind="stable")
    centres = points[order[((np.arange(k) + 0.5) / k * len(points)).astype(int)]].copy()
    labels = np.zeros(len(points), dtype=np.int64)
    for _ in range(iterations):
        dist = ((points[:, None, :] - centres[None, :, :]) ** 2).sum(axis=-1)
        labels = np.argmin(dist, axis=1)
        for j in range(k):
            members = points[labels == j]
            if len(members):
                centres[j] = members.mean(axis=0)
    return centres, labels


def _otsu(values: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold of a distance map (top 0.5% clipped, so a few extreme pixels do not flatten it)."""
    flat = values.ravel()
    top = float(np.quantile(flat, 0.995))
    if top <= 0:
        return 0.0
    hist, edges = np.histogram(np.clip(flat, 0, top), bins=bins, range=(0.0, top))
    centres = (edges[:-1] + edges[1:]) / 2
    weight0 = np.cumsum(hist)
    weight1 = weight0[-1] - weight0
    sum0 = np.cumsum(hist * centres)
    mean0 = sum0 / np.maximum(weight0, 1)
    mean1 = (sum0[-1] - sum0) / np.maximum(weight1, 1)
    between = weight0 * weight1 * (mean0 - mean1) ** 2
    return float(edges[int(np.argmax(between)) + 1])


def _erode(binary: np.ndarray, radius: float) -> np.ndarray:
    """Erosion by a disk of ``radius`` through the distance transform: O(pixels) whatever the radius.

    Pixels outside the array count as unknown, not background, so an object touching the image edge is not
    eaten away from that edge.
    """
    from scipy import ndimage

    if binary.all() or not binary.any():
        return binary.copy()
    return ndimage.distance_transform_edt(binary) > radius


def _dilate(binary: np.ndarray, radius: float) -> np.ndarray:
    """Dilation by a disk of ``radius`` (x^2 + y^2 <= r^2) through the distance transform."""
    from scipy import ndimage

    if binary.all() or not binary.any():
        return binary.copy()
    return ndimage.distance_transform_edt(~binary) <= radius


def _largest_component(binary: np.ndarray) -> np.ndarray:
    from scipy import ndimage

    labels, count = ndimage.label(binary)
    if count <= 1:
        return binary
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    return labels == int(np.argmax(sizes))


def background_image(image: np.ndarray, object_mask: np.ndarray) -> np.ndarray:
    """I_b: the image with the object blacked out (uint8 ``(H, W, 3)``)."""
    rgb = _as_rgb_array(image)
    return np.where(object_mask[..., None], 0, rgb).astype(np.uint8)


# ------------------------------------------------------------------------------------ the consumers' side


def fraction_on_object(mask: np.ndarray, object_mask: np.ndarray) -> float:
    """Share of a defect mask's pixels that lie on the object.

    Args:
        mask (`np.ndarray`): boolean (or 0/255) defect mask ``(h, w)``.
        object_mask (`np.ndarray`): boolean object mask; resized nearest-neighbour to ``mask``'s shape
            when the two differ (a synth mask at model resolution against a full-size object mask).

    Returns:
        `float`: in [0, 1]; 0.0 for an empty mask (an empty mask lies nowhere).
    """
    mask = np.asarray(mask) > 0
    obj = _resize_bool(np.asarray(object_mask) > 0, mask.shape)
    area = int(mask.sum())
    if area == 0:
        return 0.0
    return float(np.logical_and(mask, obj).sum()) / area


def plausible_location(mask: np.ndarray, object_mask: np.ndarray | None, min_fraction: float = 0.5) -> bool:
    """Whether a defect mask lies on the object (at least ``min_fraction`` of its pixels).

    A defect on an object lies on the object; ``synth``/``mask`` use this behind a flag to reject samples
    (reason ``off_object``). ``object_mask`` None (texture categories, no prior) accepts every non-empty mask.
    """
    if not np.any(np.asarray(mask) > 0):
        return False
    if object_mask is None:
        return True
    return fraction_on_object(mask, object_mask) >= min_fraction


def _resize_bool(mask: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    if mask.shape == tuple(shape[:2]):
        return mask
    img = Image.fromarray(mask.astype(np.uint8) * 255).resize((shape[1], shape[0]), Image.NEAREST)
    return np.asarray(img) > 0


@dataclass(frozen=True)
class PriorImage:
    """One row of ``prior.json``: a source image and what the prior wrote for it (paths relative to the folder)."""

    role: Role
    split: str
    stem: str
    source: str
    sha256: str
    object: str | None = None
    background: str | None = None
    object_fraction: float | None = None
    fallback: bool = False
    defect: str | None = None
    mask_sha256: str | None = None


@dataclass(frozen=True)
class PriorRecord:
    """``prior.json`` of one category, read back.

    Attributes:
        folder: ``DIR/<category>``; every relative path in the record resolves against it.
        kind: ``object`` or ``texture``.
        images: one row per source image, in the order they were processed.
    """

    folder: Path
    category: str
    kind: str
    kind_source: str
    method: str
    params: dict[str, Any]
    source: dict[str, Any]
    images: tuple[PriorImage, ...]
    defects: dict[str, dict[str, Any]]
    warnings: tuple[str, ...] = ()
    schema_version: int = PRIOR_SCHEMA_VERSION
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def is_object(self) -> bool:
        return self.kind == CategoryKind.OBJECT.value

    def find(self, split: str, stem: str) -> PriorImage | None:
        split = _safe_split(split)
        stem = safe_name(stem)
        for row in self.images:
            if row.split == split and row.stem == stem:
                return row
        return None

    def find_source(self, path: str | Path) -> PriorImage | None:
        """The row of a source image, by its path (absolute, or relative to the source category root)."""
        path = Path(path)
        root = Path(self.source.get("root", ""))
        candidates = {str(path)}
        try:
            candidates.add(path.resolve().relative_to(root.resolve()).as_posix())
        except (ValueError, OSError):
            pass
        for row in self.images:
            if row.source in candidates or str(root / row.source) in candidates:
                return row
        return None

    def location_map(self, defect: str | None = None) -> np.ndarray | None:
        """The 64x64 location map of one defect type (or of all, ``defect=None``), if written."""
        name = "location.npy" if defect is None else f"location/{safe_name(defect)}.npy"
        path = self.folder / name
        return np.load(path) if path.is_file() else None


def load_prior(prior_dir: str | Path, category: str) -> PriorRecord:
    """Read ``prior_dir/<category>/prior.json``.

    Raises:
        InputError: no prior for this category, or a prior of a newer schema.
    """
    folder = Path(prior_dir) / safe_name(category)
    path = folder / "prior.json"
    if not path.is_file():
        # Accept the category folder itself as prior_dir, like other commands accept any level.
        if (Path(prior_dir) / "prior.json").is_file():
            folder = Path(prior_dir)
            path = folder / "prior.json"
        else:
            raise InputError(
                f"no prior for category {category!r} in {prior_dir} (missing {path})",
                hint=f"run `anogen prior DATA --category {category} --out {prior_dir}` first",
            )
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise InputError(f"{path}: unreadable prior record ({exc})") from exc
    version = int(raw.get("schema_version", 0))
    if version > PRIOR_SCHEMA_VERSION:
        raise InputError(
            f"{path}: prior schema_version {version} is newer than this anogen reads ({PRIOR_SCHEMA_VERSION})",
            hint="upgrade anogen or rerun `anogen prior`",
        )
    names = {f.name for f in dataclasses.fields(PriorImage)}
    images = tuple(PriorImage(**{k: v for k, v in row.items() if k in names}) for row in raw.get("images", []))
    return PriorRecord(
        folder=folder,
        category=raw.get("category", category),
        kind=raw["kind"],
        kind_source=raw.get("kind_source", "dataset"),
        method=raw.get("method", METHOD),
        params=raw.get("params", {}),
        source=raw.get("source", {}),
        images=images,
        defects=raw.get("defects", {}),
        warnings=tuple(raw.get("warnings", [])),
        schema_version=version,
        raw=raw,
    )


def object_mask_for(prior_dir: str | Path, category: str, split: str, stem: str) -> np.ndarray | None:
    """The object mask of one source image as a boolean ``(H, W)`` array.

    Returns ``None`` for texture categories and for images the prior does not cover (callers then skip the
    plausibility check rather than reject).
    """
    record = load_prior(prior_dir, category)
    if not record.is_object:
        return None
    row = record.find(split, stem)
    if row is None or row.object is None:
        return None
    return load_mask(record.folder / row.object)


def background_paths(prior_dir: str | Path, category: str, roles: Sequence[Role] = ("train",)) -> list[Path]:
    """Background images I_b of the category's normal images, sorted (synth cycles them by sample id).

    Args:
        roles: which normals: ``("train",)`` (default; keeps test images out of generation) or
            ``("train", "test")``. When the category has no training normals, the test normals are used.

    Returns:
        `list[Path]`: absolute paths, in natural order of (split, stem); empty for texture categories.
    """
    record = load_prior(prior_dir, category)
    if not record.is_object:
        return []
    rows = [r for r in record.images if r.role in roles and r.background]
    if not rows:
        rows = [r for r in record.images if r.role in ("train", "test") and r.background]
    rows.sort(key=lambda r: (natural_key(r.split), natural_key(r.stem)))
    return [record.folder / r.background for r in rows if r.background]


# ------------------------------------------------------------------------------------------ building it


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


def read_category_checked(
    path: str | Path,
    *,
    category: str | None = None,
    dataset_format: str = "auto",
    progress: ProgressCallback | None = None,
) -> Category:
    """Read a category with ``anogen.data.read_category`` and refuse one with errors (unreadable files...).

    Raises:
        DataError: one line naming the first problem's file, with the number of further problems.
    """
    from anogen.data import read_category

    cat = read_category(path, category=category, dataset_format=dataset_format, progress=progress)
    errors = cat.errors
    if errors:
        more = f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})" if len(errors) > 1 else ""
        first = errors[0]
        where = f"{first.path}: " if first.path is not None else ""
        raise DataError(f"{where}{first.message}{more}", hint=f"`anogen data check {path}` lists every problem")
    return cat


def resolve_kind(
    category: Category,
    requested: Literal["auto", "object", "texture"] = "auto",
    *,
    preset_bcm: bool | None = None,
    params: PriorParams | None = None,
) -> tuple[str, str, list[str]]:
    """Decide object or texture: the flag, else the data set's knowledge, else the preset, else the images.

    A request for object priors on a category the data set knows to be a texture is refused with a
    warning (object masks of a texture are meaningless): the prior is written as a texture.

    Returns:
        `(kind, source, warnings)`.
    """
    warnings: list[str] = []
    known = category.kind.value if category.kind is not None else None
    if requested == "object" and known == CategoryKind.TEXTURE.value:
        warnings.append(
            f"category {category.name!r} is a texture: object priors (masks, backgrounds, BCM) do not apply; "
            "writing a texture prior without object masks"
        )
        return known, "dataset", warnings
    if requested in ("object", "texture"):
        return requested, "flag", warnings
    if known is not None:
        if known == CategoryKind.TEXTURE.value and preset_bcm:
            warnings.append(
                f"the preset turns BCM on but category {category.name!r} is a texture: "
                "no object masks or backgrounds are written; switch BCM off for it (`--bcm off`)"
            )
        return known, "dataset", warnings
    if preset_bcm is not None:
        return ("object" if preset_bcm else "texture"), "preset", warnings
    guess = _guess_kind(category, params or PriorParams())
    warnings.append(
        f"kind of category {category.name!r} unknown; guessed {guess!r} from its images (pass --kind to set it)"
    )
    return guess, "guessed", warnings


def _guess_kind(category: Category, params: PriorParams, samples: int = 5) -> str:
    """An object stands out from its border on most normal images; a texture does not."""
    normals = [*category.train_normals, *category.test_normals]
    if not normals:
        return CategoryKind.TEXTURE.value
    step = max(1, len(normals) // samples)
    fractions = []
    for info in normals[::step][:samples]:
        mask = estimate_object_mask(_read_image(info.path), params)
        fractions.append(float(mask.mean()))
    median = float(np.median(fractions))
    # Texture noise that survives the 4-sigma threshold and the opening stays far below a few percent.
    return CategoryKind.OBJECT.value if 0.02 <= median <= 0.98 else CategoryKind.TEXTURE.value


def _read_image(path: Path) -> np.ndarray:
    try:
        return np.asarray(load_rgb(path))
    except (OSError, UnidentifiedImageError, ValueError) as exc:
        raise DataError(f"{path}: unreadable image ({exc})", path=path) from exc


def _check_header(path: Path) -> None:
    """Open an image's header only: a dry run finds unreadable files without decoding pixels."""
    try:
        with Image.open(path) as img:
            img.verify()
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as exc:
        raise DataError(f"{path}: unreadable image ({exc})", path=path) from exc


def _read_mask(path: Path) -> np.ndarray:
    try:
        return load_mask(path)
    except (OSError, UnidentifiedImageError, ValueError) as exc:
        raise DataError(f"{path}: unreadable mask ({exc})", path=path) from exc


def _safe_split(split: str) -> str:
    return "/".join(safe_name(part) for part in Path(split).as_posix().split("/") if part not in ("", "."))


def split_of(category: Category, info: ImageInfo, fallback: str) -> str:
    """The split folder under which the prior files an image: its folder relative to the category root
    (``train/good``, ``test/crack``), or ``fallback`` (``train/good``, ``test/good``, ``test/<defect>``) for an
    image outside the root. Consumers pass it with the image's stem to :func:`object_mask_for`."""
    try:
        rel = info.path.parent.resolve().relative_to(category.root.resolve()).as_posix()
    except (ValueError, OSError):
        return fallback
    return _safe_split(rel) if rel not in ("", ".") else fallback


_split_of = split_of  # the name anogen.train first imported


def _source_rel(category: Category, path: Path) -> str:
    try:
        return path.resolve().relative_to(category.root.resolve()).as_posix()
    except (ValueError, OSError):
        return str(path)


@dataclass(frozen=True)
class _Job:
    role: Role
    split: str
    stem: str
    info: ImageInfo
    defect: str | None = None
    mask: ImageInfo | None = None


def _jobs(category: Category) -> list[_Job]:
    jobs: list[_Job] = []
    for role, infos, fallback in (
        ("train", category.train_normals, "train/good"),
        ("test", category.test_normals, "test/good"),
    ):
        for info in infos:
            jobs.append(_Job(role, split_of(category, info, fallback), safe_name(info.path.stem), info))  # type: ignore[arg-type]
    for name in sorted(category.defects):
        defect = category.defects[name]
        for sample in defect.samples:
            split = split_of(category, sample.image, f"test/{safe_name(name)}")
            jobs.append(_Job("defect", split, safe_name(sample.stem), sample.image, safe_name(name), sample.mask))
    seen: dict[tuple[str, str], Path] = {}
    for job in jobs:
        key = (job.split, job.stem)
        if key in seen:
            raise DataError(
                f"two images map to the same prior file {job.split}/{job.stem}.png: {seen[key]} and {job.info.path}",
                path=job.info.path,
            )
        seen[key] = job.info.path
    return jobs


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
    """Write the priors of one category to ``out_dir/<category>/`` (see the module docstring for the layout).

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


LEDGER = ".prior-progress.jsonl"


class _Ledger:
    """Append-only record of the images finished since the last ``prior.json``, one JSON line each.

    The image files themselves are written atomically before their line; a torn last line (a kill during the
    write) is ignored on reading, so the worst case is recomputing one image.
    """

    def __init__(self, path: Path, params_hash: str, kind: str) -> None:
        self.path = path
        self.params_hash = params_hash
        self.kind = kind

    def add(self, row: PriorImage) -> None:
        # Opened per line (cheap next to segmenting an image): nothing is left open if the run is interrupted.
        self.path.parent.mkdir(parents=True, exist_ok=True)
        line = {"params_hash": self.params_hash, "kind": self.kind, **dataclasses.asdict(row)}
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(line, sort_keys=True) + "\n")

    def close(self, remove: bool = False) -> None:
        if remove and self.path.exists():
            self.path.unlink()


def _read_ledger(path: Path, params_hash: str, kind: str) -> dict[tuple[str, str], dict[str, Any]]:
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    if not path.is_file():
        return rows
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue  # the torn last line of a killed run
        if isinstance(row, dict) and row.get("params_hash") == params_hash and row.get("kind") == kind:
            rows[(row["split"], row["stem"])] = row
    return rows


def _tmp_npy(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return path.with_name(f".{path.name}.tmp.npy")


def _finish_npy(path: Path) -> None:
    # np.save needs a real path; write beside the target and rename, as anogen.io does for other files.
    path.with_name(f".{path.name}.tmp.npy").replace(path)


def _stats_stems(category: Category, stats_from: str, shots: int | None) -> dict[str, list[str]]:
    """Per defect type (safe name), the stems whose masks feed the statistics."""
    from anogen.data.split import few_shot_split

    if stats_from not in ("train", "all"):
        raise InputError(f"stats_from must be train or all, not {stats_from!r}")
    stems: dict[str, list[str]] = {}
    for name, defect in category.defects.items():
        if not defect.samples:
            continue
        samples = few_shot_split(defect, shots).train if stats_from == "train" else defect.samples
        stems[safe_name(name)] = [safe_name(s.stem) for s in samples]
    return stems


def _inputs_key(
    jobs: list[_Job],
    hashes: dict[Path, str],
    params_hash: str,
    kind: str,
    category: Category,
    stats_stems: dict[str, list[str]],
) -> str:
    digest = hashlib.sha256()
    digest.update(json.dumps(stats_stems, sort_keys=True).encode())
    digest.update(f"{PRIOR_SCHEMA_VERSION}|{params_hash}|{kind}|{category.name}|{category.dataset_format}\n".encode())
    for job in jobs:
        mask = hashes.get(job.mask.path, "") if job.mask is not None else ""
        digest.update(f"{job.role}|{job.split}|{job.stem}|{job.defect}|{hashes[job.info.path]}|{mask}\n".encode())
    return digest.hexdigest()


def _read_old(folder: Path) -> dict[str, Any] | None:
    path = folder / "prior.json"
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        logger.warning("ignoring unreadable %s; recomputing the prior", path)
        return None
    return data if isinstance(data, dict) and data.get("schema_version") == PRIOR_SCHEMA_VERSION else None


def _listed_outputs(record: dict[str, Any]) -> list[str]:
    paths = [record.get("shapes"), record.get("location"), record.get("preview")]
    for row in record.get("images", []):
        paths += [row.get("object"), row.get("background")]
    for info in record.get("defects", {}).values():
        paths += [info.get("location"), info.get("location_png")]
    return [p for p in paths if p]


def _outputs_exist(folder: Path, record: dict[str, Any]) -> bool:
    return all((folder / rel).is_file() for rel in _listed_outputs(record))


def _remove_stale(folder: Path, old: dict[str, Any], new: dict[str, Any]) -> None:
    """Delete files the previous run listed and this one does not (images removed from the source)."""
    keep = set(_listed_outputs(new))
    for rel in _listed_outputs(old):
        if rel not in keep and ".." not in Path(rel).parts:
            path = folder / rel
            if path.is_file():
                path.unlink()


# ------------------------------------------------------------------------------- location and shape stats


def _defect_statistics(
    jobs: list[_Job],
    object_masks: dict[tuple[str, str], Path],
    params: PriorParams,
    stats_stems: dict[str, list[str]],
    stats_from: str,
) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """Per defect type: the location map (in the object's bounding box) and mask-shape statistics."""
    from scipy import ndimage

    size = params.location_size
    by_defect: dict[str, list[_Job]] = {}
    for job in jobs:
        if job.defect is not None and job.stem in stats_stems.get(job.defect, ()):
            by_defect.setdefault(job.defect, []).append(job)
    infos: dict[str, dict[str, Any]] = {}
    shapes: dict[str, Any] = {}
    for name, defect_jobs in by_defect.items():
        heat = np.zeros((size, size), dtype=np.float64)
        stats: dict[str, list[float]] = {
            "area_fraction": [],
            "area_of_object": [],
            "bbox_aspect": [],
            "bbox_width": [],
            "bbox_height": [],
            "components": [],
            "fraction_on_object": [],
            "center_x": [],
            "center_y": [],
        }
        with_mask = 0
        for job in defect_jobs:
            if job.mask is None:
                continue
            mask = _read_mask(job.mask.path)
            if not mask.any():
                continue
            with_mask += 1
            obj_path = object_masks.get((job.split, job.stem))
            obj = load_mask(obj_path) if obj_path is not None else None
            if obj is None or obj.shape != mask.shape:
                obj = np.ones_like(mask) if obj is None else _resize_bool(obj, mask.shape)
            y0, y1, x0, x1 = _bbox(obj) if obj.any() else (0, mask.shape[0], 0, mask.shape[1])
            crop = mask[y0:y1, x0:x1].astype(np.float32)
            if crop.size:
                heat += np.asarray(Image.fromarray(crop, mode="F").resize((size, size), Image.BOX), dtype=np.float64)
            my0, my1, mx0, mx1 = _bbox(mask)
            height, width = mask.shape
            _, components = ndimage.label(mask)
            ys, xs = np.nonzero(mask)
            stats["area_fraction"].append(float(mask.mean()))
            stats["area_of_object"].append(float(mask.sum() / max(1, obj.sum())))
            stats["bbox_aspect"].append((mx1 - mx0) / (my1 - my0))
            stats["bbox_width"].append((mx1 - mx0) / width)
            stats["bbox_height"].append((my1 - my0) / height)
            stats["components"].append(float(components))
            stats["fraction_on_object"].append(fraction_on_object(mask, obj))
            # Centre in the object's box: 0..1 inside it.
            stats["center_x"].append(float((xs.mean() + 0.5 - x0) / max(1, x1 - x0)))
            stats["center_y"].append(float((ys.mean() + 0.5 - y0) / max(1, y1 - y0)))
        heat = heat / max(1, with_mask)
        infos[name] = {
            "samples": len(defect_jobs),
            "with_mask": with_mask,
            "location": f"location/{name}.npy",
            "location_png": f"location/{name}.png",
            "stats_from": stats_from,
            "stems": [job.stem for job in defect_jobs],
            "_heat": heat,
        }
        shapes[name] = {"samples": len(defect_jobs), "with_mask": with_mask, "stats_from": stats_from}
        shapes[name].update({key: _summary(values) for key, values in stats.items()})
    return infos, shapes


def _bbox(mask: np.ndarray) -> tuple[int, int, int, int]:
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    return int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1


def _summary(values: list[float]) -> dict[str, float] | None:
    if not values:
        return None
    arr = np.asarray(values, dtype=np.float64)
    return {
        "min": round(float(arr.min()), 6),
        "median": round(float(np.median(arr)), 6),
        "mean": round(float(arr.mean()), 6),
        "max": round(float(arr.max()), 6),
    }


def _heat_png(heat: np.ndarray, scale: int = 4) -> np.ndarray:
    """A location map as an RGB PNG: black (never) to yellow (always), upscaled for viewing."""
    peak = float(heat.max())
    norm = heat / peak if peak > 0 else heat
    rgb = np.stack([np.clip(norm * 2, 0, 1), np.clip(norm * 2 - 1, 0, 1) * 0.9 + norm * 0.1, norm * 0.15], -1)
    img = (rgb * 255 + 0.5).astype(np.uint8)
    return np.kron(img, np.ones((scale, scale, 1), dtype=np.uint8))


def _preview(
    category: Category, jobs: list[_Job], object_masks: dict[tuple[str, str], Path], count: int, cell: int = 128
) -> np.ndarray:
    """Grid of normal images with the background tinted and the object outline drawn."""
    from scipy import ndimage

    normals = [j for j in jobs if j.role in ("train", "test") and (j.split, j.stem) in object_masks]
    if len(normals) > count:
        picks = np.linspace(0, len(normals) - 1, count).round().astype(int)
        normals = [normals[i] for i in picks]
    cols = max(1, int(np.ceil(np.sqrt(len(normals)))))
    rows = max(1, int(np.ceil(len(normals) / cols)))
    grid = np.full((rows * cell, cols * cell, 3), 32, dtype=np.uint8)
    for i, job in enumerate(normals):
        img = Image.fromarray(_read_image(job.info.path)).resize((cell, cell), Image.BILINEAR)
        obj = Image.fromarray(load_mask(object_masks[(job.split, job.stem)]).astype(np.uint8) * 255).resize(
            (cell, cell), Image.NEAREST
        )
        arr = np.asarray(img).astype(np.float32)
        mask = np.asarray(obj) > 0
        tint = np.array([40, 80, 200], dtype=np.float32)
        arr = np.where(mask[..., None], arr, arr * 0.5 + tint * 0.5)
        edge = mask & ~ndimage.binary_erosion(mask, iterations=1)
        arr[edge] = (255, 64, 32)
        r, c = divmod(i, cols)
        grid[r * cell : (r + 1) * cell, c * cell : (c + 1) * cell] = arr.astype(np.uint8)
    return grid
