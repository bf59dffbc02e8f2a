"""The normal model's parts against independent references: coreset, held-out split, features of any VAE."""

from __future__ import annotations

import numpy as np
import pytest

from anogen.verify import VerifyConfig


def test_greedy_coreset_picks_the_farthest_point_each_step():
    import torch

    from anogen.verify.coreset import greedy_coreset

    rng = np.random.default_rng(0)
    points = rng.normal(size=(200, 5)).astype(np.float32)
    chosen = greedy_coreset(torch.from_numpy(points), 12, seed=3, project_dim=128).numpy()
    assert len(set(chosen.tolist())) == 12
    # Reference: plain numpy farthest-point selection from the same first point (5 dims: no projection).
    ref = [int(chosen[0])]
    nearest = np.linalg.norm(points - points[ref[0]], axis=1)
    for _ in range(11):
        ref.append(int(np.argmax(nearest)))
        nearest = np.minimum(nearest, np.linalg.norm(points - points[ref[-1]], axis=1))
    assert chosen.tolist() == ref
    # Seeded: the same seed, the same subset; all rows when asked for as many.
    assert greedy_coreset(torch.from_numpy(points), 12, seed=3).tolist() == chosen.tolist()
    assert greedy_coreset(torch.from_numpy(points), 500, seed=3).tolist() == list(range(200))


def test_holdout_split_is_disjoint_seeded_and_never_empty():
    from anogen.verify.normal import split_holdout

    bank, held = split_holdout(60, VerifyConfig())
    assert len(held) == 12 and sorted(bank + held) == list(range(60))
    assert split_holdout(60, VerifyConfig()) == (bank, held)
    assert split_holdout(60, VerifyConfig(seed=1)) != (bank, held)
    assert [len(p) for p in split_holdout(2, VerifyConfig())] == [1, 1]


def test_same_code_runs_on_another_vae_layout(tiny_backbone):
    """The random tiny backbone: 2 encoder blocks, 2x VAE, 32 px. Blocks, stride and size are read, not assumed."""
    from anogen.verify.normal import build_normal_model

    rng = np.random.default_rng(0)
    images = [rng.integers(60, 200, (32, 32, 3), dtype=np.uint8) for _ in range(5)]
    model = build_normal_model(tiny_backbone, images, VerifyConfig(holdout=0.4))
    assert model.blocks == [0] and model.stride == 2
    assert model.bank.shape[1] == tiny_backbone.vae.config.block_out_channels[0] + 2
    maps = model.anomaly_maps(images[:2])
    assert maps.shape == (2, 32, 32) and np.isfinite(maps).all()
    with pytest.raises(Exception, match="32x32"):
        model.anomaly_map(np.zeros((64, 64, 3), np.uint8))
