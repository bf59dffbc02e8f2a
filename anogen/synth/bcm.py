"""BCM at sampling time: which real background each attempt uses, and what the reference pass sees.

The reference implementation (DualAnoDiff's ``bcm-dual-interrelated_diff/inference_test_tempt.py``) samples with a
new background every 50 images (screw: 10), taken in turn from the first third of the category's normal training
images, and gives the *unconditional* half of classifier-free guidance a reference pass over a grey image. The
:class:`~anogen.config.SampleConfig` fields ``bcm_reference_every``, ``bcm_reference_pool`` and
``bcm_uncond_reference`` express that schedule; their defaults (1, ``all``, ``background``) keep anogen's earlier
behaviour (a new background at every attempt, cycling over every training normal, the same background for both
halves). No torch at module level: the planning helpers are used without a model.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

    from anogen.model.backbone import Backbone

POOLS = ("all", "first_third")
UNCOND_REFERENCES = ("background", "grey")


def pool_size(available: int, pool: str) -> int:
    """How many of ``available`` backgrounds (in natural order) the schedule cycles over.

    ``all`` is every one; ``first_third`` is floor(N/3), at least one (as the reference implementation, which
    keeps ``files[: len(files) // 3]``; it would keep none of fewer than three).
    """
    if pool not in POOLS:
        raise ValueError(f"bcm_reference_pool must be one of {POOLS}, got {pool!r}")
    if available <= 0:
        return 0
    return available if pool == "all" else max(1, available // 3)


def reference_index(sample_id: int, count: int, every: int = 1) -> int:
    """Which of ``count`` backgrounds attempt ``sample_id`` uses: a new one every ``every`` attempts, in turn.

    A pure function of the attempt id, so an attempt's background depends on neither batch size nor process count.
    """
    if count <= 0:
        raise ValueError("no backgrounds to choose from")
    if every < 1:
        raise ValueError(f"bcm_reference_every must be >= 1, got {every}")
    return (sample_id // every) % count


def encode_grey(backbone: Backbone, *, device: torch.device | str) -> torch.Tensor:
    """Latent ``(1, C, h, w)`` of a uniform neutral-grey image (0 in [-1, 1]), scaled as :func:`encode_backgrounds`
    scales real backgrounds, so that the grey and the real reference differ by content only."""
    import torch

    size = backbone.resolution
    vae = backbone.vae
    grey = torch.zeros((1, 3, size, size), device=device, dtype=next(vae.parameters()).dtype)
    with torch.no_grad():
        latent = vae.encode(grey).latent_dist.mode()
    return ((latent - backbone.shift_factor) * backbone.scaling_factor).float()


def noised_references(
    refs: torch.Tensor,
    noise: torch.Tensor,
    alpha_bar: torch.Tensor,
    *,
    guided: bool,
    grey: torch.Tensor | None,
) -> torch.Tensor:
    """The reference pass's input at one step: ``sqrt(a) x + sqrt(1 - a) noise`` (the DDPM forward process).

    Args:
        refs (`torch.Tensor` of shape `(P, C, h, w)`): clean background latent of each pair.
        noise (`torch.Tensor` of shape `(P, C, h, w)`): this step's noise of each pair.
        alpha_bar (`torch.Tensor`, 0-d): the cumulative alpha of the step's timestep.
        guided (`bool`): classifier-free guidance is on: return ``[uncond (P), cond (P)]`` rows.
        grey (`torch.Tensor` of shape `(1, C, h, w)`, *optional*): with guidance, the unconditional rows see this
            grey latent (same noise as their pair's conditional row, so the two differ by the background only);
            ``None``: they see the same background as the conditional rows.
    """
    import torch

    signal, spread = alpha_bar.sqrt(), (1 - alpha_bar).sqrt()
    cond = signal * refs + spread * noise
    if not guided:
        return cond
    if grey is None:
        return torch.cat([cond, cond])
    uncond = signal * grey.expand_as(refs) + spread * noise
    return torch.cat([uncond, cond])
