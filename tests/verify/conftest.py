"""Shared fixtures of the verification tests: the shipped toy backbone and the seed-0 toy object's normal model."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def toy_backbone():
    """The shipped, pretrained toy backbone (read-only for tests)."""
    from anogen.config import BackboneConfig
    from anogen.model.backbone import load_backbone

    return load_backbone(BackboneConfig("toy"))


@pytest.fixture(scope="session")
def object_world(toy_backbone):
    """Toy object, data seed 0 (the measurements behind the bars use seeds 1-3): images, model, round trips."""
    from anogen.toy.data import DEFECTS
    from anogen.verify import VerifyConfig
    from anogen.verify.features import round_trip
    from anogen.verify.normal import build_normal_model
    from bench.verify import toy_cases

    cases = toy_cases("object", 0)
    model = build_normal_model(toy_backbone, cases["normals"], VerifyConfig())
    items = [(d, *x) for d in DEFECTS for x in cases["defects"][d]]
    trips = round_trip(toy_backbone.vae, [image for _, image, _, _ in items])
    good_trips = round_trip(toy_backbone.vae, cases["good"])
    return {"cases": cases, "model": model, "items": items, "trips": trips, "good_trips": good_trips,
            "maps": model.anomaly_maps(trips), "good_maps": model.anomaly_maps(good_trips)}
