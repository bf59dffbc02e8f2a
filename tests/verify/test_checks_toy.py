"""The checks on constructed toy cases, with the default thresholds of VerifyConfig.

Cases (toy object, data seed 0, real defect images of the three types passed through the toy VAE as generated
images are): a real defect image with its own mask; the same with the mask moved elsewhere; with a 14-px patch of
the object pasted onto the background away from the mask; a training shot after a VAE round trip and a 2-px shift.
The rates' bars were measured with `python -m bench.verify --kind object --seeds 1 2 3` (other data seeds than
this test's) and sit below the lowest measured rate: a real defect with its own mask passed in 100 %, 97 % and
93 % of the 30 images per seed; the pasted patch failed `background` in 100 %, 93 % and 100 %; every moved mask
failed `misaligned` but one (100 %, 100 %, 97 %); every shifted round-tripped shot failed `copy` and no other
defect image did.
"""

from __future__ import annotations

import numpy as np

from anogen.verify import VerifyConfig, reject_reason, score_sample
from anogen.verify.shots import build_shot_bank
from bench.verify import paste_patch, shift

CONFIG = VerifyConfig(mode="reject")
CORRECT_PASS_BAR = 0.85
PASTED_FAIL_BAR = 0.85
MOVED_FAIL_BAR = 0.9


def _scores(world, images, masks, shots=None) -> list:
    model = world["model"]
    maps = model.anomaly_maps(images)
    return [score_sample(i, m, a, model, shots) for i, m, a in zip(images, masks, maps, strict=True)]


def _reasons(world, images, masks, shots=None) -> list[str | None]:
    return [reject_reason(s, CONFIG) for s in _scores(world, images, masks, shots)]


def test_real_defect_with_its_own_mask_passes(object_world):
    masks = [m for _, _, m, _ in object_world["items"]]
    reasons = _reasons(object_world, object_world["trips"], masks)
    assert np.mean([r is None for r in reasons]) >= CORRECT_PASS_BAR, reasons


def test_mask_moved_elsewhere_fails_misaligned(object_world):
    # Half the image down and a third across: always off the defect (the toy defects are small).
    masks = [np.roll(m, (32, 21), axis=(0, 1)) for _, _, m, _ in object_world["items"]]
    assert all(not (a & b).any() for a, b in zip(masks, [m for _, _, m, _ in object_world["items"]], strict=True))
    reasons = _reasons(object_world, object_world["trips"], masks)
    assert np.mean([r == "misaligned" for r in reasons]) >= MOVED_FAIL_BAR, reasons


def test_object_patch_pasted_outside_the_mask_fails_background(object_world):
    items, trips = object_world["items"], object_world["trips"]
    pasted = [paste_patch(t, m, obj, seed=i) for i, (t, (_, _, m, obj)) in enumerate(zip(trips, items, strict=True))]
    masks = [m for _, _, m, _ in items]
    scores = _scores(object_world, pasted, masks)
    # The check itself fails (the reason named may be `misaligned`: the pasted anomaly outranks the mask too).
    failed = [s.background > CONFIG.background_max for s in scores]
    assert np.mean(failed) >= PASTED_FAIL_BAR, [round(s.background, 2) for s in scores]
    assert all(reject_reason(s, CONFIG) is not None for s, f in zip(scores, failed, strict=True) if f)


def test_round_tripped_shifted_training_shot_fails_copy(object_world, toy_backbone):
    from anogen.verify.features import round_trip

    for defect in ("stain", "scratch", "hole"):
        items = [(image, mask) for d, image, mask, _ in object_world["items"] if d == defect]
        shots = [image for image, _ in items[:3]]
        bank = build_shot_bank(toy_backbone, shots, CONFIG)
        copies = [shift(t, 2, -2) for t in round_trip(toy_backbone.vae, shots)]
        copy_masks = [np.roll(mask, (2, -2), axis=(0, 1)) for _, mask in items[:3]]
        scores = _scores(object_world, copies, copy_masks, bank)
        assert all(s.copy < CONFIG.copy_min for s in scores), [s.copy for s in scores]
        assert all(reject_reason(s, CONFIG) is not None for s in scores)
        # The other real defect images of the type are not copies of the shots.
        others = round_trip(toy_backbone.vae, [image for image, _ in items[3:]])
        model = object_world["model"]
        scores = [score_sample(o, m, a, model, bank).copy for o, (_, m), a in
                  zip(others, items[3:], model.anomaly_maps(others), strict=True)]
        assert min(scores) > CONFIG.copy_min
