"""Greedy k-centre coreset: a small subset of feature vectors that covers all of them (PatchCore's subsampling)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


def greedy_coreset(features: torch.Tensor, count: int, seed: int, project_dim: int = 128,
                   chunk: int = 65536) -> torch.Tensor:
    """Indices of ``count`` rows of ``features`` chosen by farthest-point selection.

    Starting from a seeded random row, each step adds the row farthest from everything chosen so far, so the
    largest distance from any row to its nearest chosen row (what a nearest-neighbour score loses) shrinks
    greedily. Distances are taken in a seeded Gaussian random projection to ``project_dim`` dimensions (as
    PatchCore does), which keeps the selection cheap for wide features.

    Args:
        features (`torch.Tensor`): (N, C) float rows.
        count (`int`): rows to keep; ``count >= N`` keeps all, in order.
        seed (`int`): seed of the projection and the first row.
        project_dim (`int`, defaults to 128): projection width (no projection when C is not larger).
        chunk (`int`, defaults to 65536): rows per distance update, which bounds the memory of one step.

    Returns:
        `torch.Tensor`: int64 indices in selection order, on the CPU.
    """
    import torch

    n = features.shape[0]
    if count >= n:
        return torch.arange(n)
    generator = torch.Generator("cpu").manual_seed(seed)
    x = features.float()
    if x.shape[1] > project_dim:
        projection = torch.randn(x.shape[1], project_dim, generator=generator) / project_dim**0.5
        x = x @ projection.to(x.device)
    first = int(torch.randint(n, (1,), generator=generator))
    chosen = torch.empty(count, dtype=torch.int64)
    chosen[0] = first
    nearest = torch.full((n,), float("inf"), device=x.device)
    last = x[first : first + 1]
    for step in range(1, count):
        for start in range(0, n, chunk):
            part = torch.cdist(x[start : start + chunk], last).squeeze(1)
            nearest[start : start + chunk] = torch.minimum(nearest[start : start + chunk], part)
        # argmax returns the first maximum, so ties break by row order: deterministic.
        index = int(torch.argmax(nearest))
        chosen[step] = index
        last = x[index : index + 1]
    return chosen
