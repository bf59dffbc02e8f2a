"""The one config object of sample verification: how the normal model is built and where the checks draw the line.

It is the ``verify:`` section of a preset (:data:`anogen.config.SECTIONS` uses this class; there is no second one),
so presets, ``--config`` files and ``anogen synth`` flags (``--verify``, ``--min-alignment``, ``--max-background``,
``--min-copy-distance``) set it. No torch here: :mod:`anogen.config` imports it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

from anogen.errors import InputError

Mode = Literal["reject", "score", "off"]
MODES: tuple[str, ...] = ("reject", "score", "off")
# The fields that only judge scores (or say what to do with them): changing one of these re-judges recorded
# scores; changing any other field (how scores are computed) means scoring again.
JUDGING_FIELDS: tuple[str, ...] = ("mode", "alignment_min", "background_max", "copy_min", "batch_size", "refine",
                                   "refine_band", "refine_fraction")
# The fields that change what the normal model holds; the cache is keyed on them (the others act at query time).
MODEL_FIELDS: tuple[str, ...] = (
    "feature_blocks", "feature_pool", "position_weight", "coreset_ratio", "bank_max", "holdout", "seed"
)


@dataclass(frozen=True)
class VerifyConfig:
    """How generated samples are checked against the category's normals.

    Lengths around a mask are given in *feature cells* (one cell is the VAE's downsampling at the feature block,
    e.g. 4 px for the toy backbone, 8 px for SD-1.5), the resolution at which the anomaly map is computed.
    Anomaly maps are in *normal units*: 1.0 is the ``scale_quantile`` quantile of the highest score of each
    held-out normal image, so thresholds carry over between backbones.

    Args:
        mode (`str`, defaults to `"off"`): ``reject`` (failing samples are rejected with a reason), ``score``
            (scores recorded, nothing rejected) or ``off`` (no scoring). The default is ``off`` so that a config
            without a ``verify:`` section (an adapter fitted before verification existed) behaves as before; the
            toy presets set ``reject``, the SD-1.x presets ``score`` until their thresholds are validated on real
            data (docs/presets.md).
        feature_blocks (`tuple[int, ...]`, defaults to `(-2,)`): the VAE encoder's down blocks whose outputs
            are the features; negative indices count from the deepest. -2 is the last block that downsamples:
            its output has the latent's resolution in SD-1.x VAEs (the deepest block does not downsample).
        feature_pool (`int`, defaults to 1): side of the local average over feature cells (PatchCore uses 3).
        position_weight (`float`, defaults to 0.5): weight of each cell's place in the image, appended to its
            features as two coordinates (0-1) times this weight times the features' spread (the root mean square
            distance of the normals' cells to their mean). A piece of the object where normals show background
            then scores high; textures, whose normals look alike everywhere, are not hurt (measured: docs/verify.md).
            0 makes the bank position-free, as PatchCore is.
        coreset_ratio (`float`, defaults to 0.1): fraction of the normals' feature cells kept in the memory bank
            (greedy k-centre coreset); 1.0 keeps all.
        bank_max (`int`, defaults to 16384): most cells kept, whatever the ratio (bounds memory and time at 512 px).
        holdout (`float`, defaults to 0.2): fraction of the normals kept out of the bank to calibrate the scores.
        scale_quantile (`float`, defaults to 0.95): quantile of the held-out normals' per-image maxima that
            defines 1.0 in normal units.
        blur_sigma (`float`, defaults to 0.25): Gaussian smoothing of the anomaly map, in feature cells.
        batch_size (`int`, defaults to 8): images per VAE batch.
        seed (`int`, defaults to 0): seed of the held-out split and of the coreset.
        alignment_min (`float`, defaults to 0.75): least ``alignment`` (an AUROC, 0.5 is chance) of an accepted
            sample; below it the reason is ``misaligned``.
        alignment_floor (`float`, defaults to 1.0): map values below this (normal units) count as equally normal
            in ``alignment``, so a defect the model cannot tell from normal variation does not align by chance.
        alignment_band (`float`, defaults to 0.5): a band this wide (in feature cells) around the mask is left
            out of the negatives of ``alignment`` (masks are not pixel-exact and the map is smooth).
        background_margin (`float`, defaults to 3.0): the mask is dilated by this many feature cells before
            ``background`` looks at the rest of the image (a strong defect lights up the cells whose receptive
            field reaches it).
        background_max (`float`, defaults to 1.2): the most anomalous location outside the dilated mask may
            score at most this (normal units); above it the reason is ``background``.
        copy_min (`float`, defaults to 1.5): least ``copy`` (distance to the nearest training shot over the
            backbone's own round-trip error on the shots); below it the reason is ``copy``.
        copy_size (`int`, defaults to 64): side at which images are compared for ``copy`` (area downsampling).
        copy_max_shift (`int`, defaults to 3): shifts up to this many pixels (at ``copy_size``) are searched.
        copy_blur (`float`, defaults to 1.0): Gaussian smoothing (pixels at ``copy_size``) before comparing,
            which removes the fine noise the autoencoder does not reproduce.
        refine (`bool`, defaults to False): let the whole image's anomaly map re-decide the mask's rim before
            the checks (:mod:`anogen.verify.refine`; measured to lower the toy figures, so opt-in).
        refine_band (`float`, defaults to 1.0): half-width of the re-decided band around the rim, in feature cells.
        refine_fraction (`float`, defaults to 0.5): a band pixel joins the mask where the map reaches this
            fraction of its peak inside the mask (and at least ``alignment_floor``).
    """

    mode: Mode = "off"
    feature_blocks: tuple[int, ...] = (-2,)
    feature_pool: int = 1
    position_weight: float = 0.5
    coreset_ratio: float = 0.1
    bank_max: int = 16384
    holdout: float = 0.2
    scale_quantile: float = 0.95
    blur_sigma: float = 0.25
    batch_size: int = 8
    seed: int = 0
    alignment_min: float = 0.75
    alignment_floor: float = 1.0
    alignment_band: float = 0.5
    background_margin: float = 3.0
    background_max: float = 1.2
    copy_min: float = 1.5
    copy_size: int = 64
    copy_max_shift: int = 3
    copy_blur: float = 1.0
    refine: bool = False
    refine_band: float = 1.0
    refine_fraction: float = 0.5

    def __post_init__(self) -> None:
        # Frozen dataclasses cannot normalise fields in place except through object.__setattr__: YAML gives lists.
        object.__setattr__(self, "feature_blocks", tuple(int(b) for b in self.feature_blocks))
        if self.mode not in MODES:
            raise InputError(f"verify mode {self.mode!r} is not one of {', '.join(MODES)}")
        if not self.feature_blocks:
            raise InputError("verify feature_blocks must name at least one VAE encoder block")
        if self.feature_pool < 1 or self.feature_pool % 2 == 0:
            raise InputError(f"verify feature_pool must be an odd number >= 1, got {self.feature_pool}")
        if not 0.0 < self.coreset_ratio <= 1.0:
            raise InputError(f"verify coreset_ratio must lie in (0, 1], got {self.coreset_ratio}")
        if self.bank_max < 1:
            raise InputError(f"verify bank_max must be >= 1, got {self.bank_max}")
        if not 0.0 < self.holdout < 1.0:
            raise InputError(f"verify holdout must lie in (0, 1), got {self.holdout}")
        if not 0.0 < self.scale_quantile <= 1.0:
            raise InputError(f"verify scale_quantile must lie in (0, 1], got {self.scale_quantile}")
        for name in ("position_weight", "blur_sigma", "alignment_band", "background_margin", "copy_blur"):
            if getattr(self, name) < 0:
                raise InputError(f"verify {name} must be >= 0, got {getattr(self, name)}")
        # The thresholds: alignment is an AUROC, the other two are ratios of non-negative numbers.
        if not 0.0 <= self.alignment_min <= 1.0:
            raise InputError(f"verify alignment_min (--min-alignment) must lie in [0, 1], got {self.alignment_min}")
        if not self.background_max >= 0.0:  # also refuses NaN
            raise InputError(f"verify background_max (--max-background) must be >= 0, got {self.background_max}")
        if not self.copy_min >= 0.0:
            raise InputError(f"verify copy_min (--min-copy-distance) must be >= 0, got {self.copy_min}")
        if not self.alignment_floor >= 0.0:
            raise InputError(f"verify alignment_floor must be >= 0, got {self.alignment_floor}")
        if not isinstance(self.refine, bool):
            raise InputError(f"verify refine must be true or false, got {self.refine!r}")
        if not self.refine_band >= 0.0 or not 0.0 <= self.refine_fraction <= 1.0:
            raise InputError(f"verify refine_band must be >= 0 and refine_fraction in [0, 1], got "
                             f"{self.refine_band} and {self.refine_fraction}")
        if self.batch_size < 1 or self.copy_size < 8 or self.copy_max_shift < 0:
            raise InputError("verify batch_size must be >= 1, copy_size >= 8 and copy_max_shift >= 0")

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["feature_blocks"] = list(self.feature_blocks)
        return data

    def model_key(self) -> dict[str, Any]:
        """The fields the normal model's content depends on (its cache key), JSON-ready."""
        data = self.to_dict()
        return {name: data[name] for name in MODEL_FIELDS}
