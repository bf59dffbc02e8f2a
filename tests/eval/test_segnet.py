"""The detector network, its loss and its image score."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from anogen.eval.segnet import build_segnet, focal_loss, image_scores, score_kernel


def test_shapes_and_seeded_init_leave_global_rng_alone() -> None:
    state = torch.random.get_rng_state()
    a, b = build_segnet(seed=3, width=8), build_segnet(seed=3, width=8)
    assert torch.equal(torch.random.get_rng_state(), state)
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(pa, pb)
    x = torch.zeros(2, 3, 32, 32)
    assert a(x).shape == (2, 1, 32, 32)
    assert not all(torch.equal(p, q) for p, q in zip(a.parameters(), build_segnet(4, 8).parameters(), strict=True))


def test_focal_loss_reduces_to_bce_and_down_weights_easy_pixels() -> None:
    logits = torch.tensor([[3.0, -2.0, 0.5, -0.1]])
    target = torch.tensor([[1.0, 0.0, 0.0, 1.0]])
    bce = F.binary_cross_entropy_with_logits(logits, target)
    assert focal_loss(logits, target, gamma=0.0) == pytest.approx(bce.item(), rel=1e-6)
    # By hand for gamma 2: each pixel's BCE times (1 - p_t)^2, p_t = the probability of the true class.
    p = torch.sigmoid(logits)
    p_t = torch.where(target > 0, p, 1 - p)
    expected = ((1 - p_t) ** 2 * -torch.log(p_t)).mean()
    assert focal_loss(logits, target, gamma=2.0) == pytest.approx(expected.item(), rel=1e-6)


def test_image_score_is_max_of_box_filtered_map() -> None:
    maps = torch.zeros(2, 1, 16, 16)
    maps[0, 0, 8, 8] = 1.0  # one hot pixel: diluted by a 3x3 box to 1/9
    maps[1, 0, 4:7, 4:7] = 0.5  # a 3x3 blob: its centre keeps the full 0.5
    scores = image_scores(maps, 3)
    assert scores.tolist() == pytest.approx([1 / 9, 0.5])
    assert score_kernel(256) == 21 and score_kernel(64) == 5 and score_kernel(32) == 3
