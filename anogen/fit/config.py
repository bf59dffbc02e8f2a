"""The config a fit trains with: the command's :class:`~anogen.config.ConfigRequest` resolved once, over the
preset chosen for the category when the request names none, then at the training resolution its backbone
decides. No torch."""

from __future__ import annotations

from typing import TYPE_CHECKING

from anogen.config import ConfigRequest, ResolvedConfig, preset_for, resolve
from anogen.model.spec import resolution_for_backbone

if TYPE_CHECKING:
    from anogen.data.model import Category


def fit_config(category: Category, request: ConfigRequest) -> ResolvedConfig:
    """``request`` resolved for ``category``: its preset, else the one :func:`anogen.config.choose_preset` picks
    for the category (``mvtec/<category>``, ``generic/object``, ...); the recipe, config file and flags on top."""
    preset = request.preset or preset_for(category.dataset_format, category.name, category.kind)
    return resolve(preset, request.config_file, request.overrides, recipe=request.recipe)


def fit_resolution(config: ResolvedConfig, request: ConfigRequest) -> tuple[ResolvedConfig, str | None]:
    """``config`` at the resolution its backbone trains at (:func:`anogen.model.spec.resolution_for_backbone`):
    a resolution the user gave (a flag or the config file) is kept; returns the config and a one-line notice."""
    return resolution_for_backbone(config, resolution_given=request.gives("train", "resolution"))


def config_for_fit(category: Category, config: ResolvedConfig | ConfigRequest) -> ResolvedConfig:
    """What :func:`anogen.fit.fit` trains with: a resolved config as it is, a request through :func:`fit_config`
    and :func:`fit_resolution`."""
    if isinstance(config, ResolvedConfig):
        return config
    resolved, _ = fit_resolution(fit_config(category, config), config)
    return resolved
