"""Mask refinement (issue 14 item 5): known geometry for the pure function, and its wiring in ``anogen synth``.

Independent expectations: a disc mask inside a brighter, wider disc of the map grows to the map's disc within
the band, and no farther; inside a narrower one it shrinks; a bright spot away from the mask is never added; the
masks synth writes with ``refine`` on are the refinement of the mask step's masks by the model's own maps.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from anogen.errors import InputError
from anogen.io import load_mask, load_rgb
from anogen.masks import make_mask
from anogen.records.manifest import read_rows
from anogen.verify.refine import refine_mask, rim_band
from tests.verify.test_synth_verify import _synth, runs  # noqa: F401 - runs is the fixture


def _disc(radius: float, size: int = 48, centre: tuple[float, float] = (24, 24)) -> np.ndarray:
    yy, xx = np.mgrid[:size, :size]
    return (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= radius**2


def _within(mask: np.ndarray, width: float) -> np.ndarray:
    """Pixels at most ``width`` from a mask pixel, by brute force (independent of the distance transform)."""
    ys, xs = np.nonzero(mask)
    yy, xx = np.mgrid[: mask.shape[0], : mask.shape[1]]
    d2 = (yy[..., None] - ys) ** 2 + (xx[..., None] - xs) ** 2
    return d2.min(axis=-1) <= width**2


def test_grows_to_the_map_within_the_band_only():
    mask = _disc(6)
    amap = np.where(_disc(9), 5.0, 0.2) + np.where(_disc(2, centre=(5, 5)), 9.0, 0.0)
    grown = refine_mask(mask, amap, width=2, fraction=0.5)
    assert (grown == (_within(mask, 2) & _disc(9))).all()  # up to the band's edge, not to the map's disc
    assert not grown[:10, :10].any()  # the bright spot elsewhere stays out
    assert (refine_mask(mask, amap, width=4, fraction=0.5) == _disc(9)).all()


def test_trims_to_the_map_and_keeps_the_core():
    mask = _disc(8)
    amap = np.where(_disc(5), 6.0, 0.5)
    trimmed = refine_mask(mask, amap, width=2, fraction=0.5)
    core = ~_within(~mask, 2)  # farther than 2 px inside the rim: kept whatever the map says
    assert (trimmed == (core | _disc(5))).all() and core.sum() > 0 and (core & ~_disc(5)).any()
    assert (refine_mask(mask, amap, width=3, fraction=0.5) == _disc(5)).all()


def test_floor_band_and_errors():
    mask = _disc(5)
    weak = np.where(_disc(8), 0.9, 0.1)  # below the floor (a normal image's level): nothing joins
    assert (refine_mask(mask, weak, width=3, fraction=0.1) == (mask & ~_within(~mask, 3))).all()
    assert (rim_band(mask, 3) == ((_within(mask, 3) & ~mask) | (mask & _within(~mask, 3)))).all()
    assert not rim_band(np.zeros((8, 8), bool), 2).any()
    assert not refine_mask(np.zeros((8, 8), bool), np.ones((8, 8)), width=2, fraction=0.5).any()
    with pytest.raises(InputError):
        refine_mask(mask, np.ones((4, 4)), width=2, fraction=0.5)
    with pytest.raises(InputError):
        refine_mask(mask, weak, width=2, fraction=1.5)


def test_synth_writes_refined_masks_when_asked(runs, tmp_path):  # noqa: F811 - the imported fixture
    from anogen.config import BackboneConfig, resolve
    from anogen.model.backbone import load_backbone
    from anogen.verify.cache import load_normal_model

    _synth(runs, tmp_path / "plain", 3, mode="score")
    _synth(runs, tmp_path / "refined", 3, mode="score", refine=True, refine_band=2.0, refine_fraction=0.3)
    plain, refined = tmp_path / "plain" / "object" / "stain", tmp_path / "refined" / "object" / "stain"
    rows = read_rows(refined / "manifest.jsonl")
    backbone = load_backbone(BackboneConfig("tiny"))
    model = load_normal_model(refined.parent / ".verify", backbone)
    recorded = json.loads((refined / "run.json").read_text())["mask"]
    mask_config = resolve(overrides={"mask": recorded}).mask
    changed = 0
    for row in rows:
        image = np.asarray(load_rgb(refined / row["image"]))
        step = make_mask(np.asarray(load_rgb(refined / row["part"])), mask_config, size=image.shape[:2])
        written = load_mask(refined / row["mask"]) > 0
        if "verify" not in row:  # the mask step rejected it: its mask is the step's own
            assert (written == (step.mask > 0)).all()
            continue
        width = round(2.0 * model.stride)
        expected = refine_mask(step.mask, model.anomaly_map(image), width=width, fraction=0.3)
        assert (written == expected).all()
        assert row["mask_area"] == pytest.approx(float(expected.mean()), abs=1e-6)
        changed += int((written != (step.mask > 0)).any())
        assert ((load_mask(plain / row["mask"]) > 0) == (step.mask > 0)).all()  # without refine: the step's
    assert changed > 0  # the refinement did something on these samples, so the comparison means something
