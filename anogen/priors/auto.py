"""The prior ``fit`` builds itself when BCM is on and no ``--prior`` is given: ``RUNS/_prior/<category>/``.

BCM needs each training image's background (the image with the object blacked out), which ``anogen prior``
makes. A user fitting their own category with the ``generic/object`` preset should not have to know that:
``fit`` builds the prior into the runs folder, records it in ``adapter.json`` like a given ``--prior``, and
reuses it on the next run (``build_prior`` is cached by the sha256 of every input, so an unchanged category
rewrites nothing). The folder name starts with ``_``, which ``safe_name`` strips from every category name,
so it can never be a category's own folder.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from anogen.data.model import Category, CategoryKind
from anogen.errors import AnogenError
from anogen.io import safe_name
from anogen.priors.build import build_prior
from anogen.progress import ProgressCallback

if TYPE_CHECKING:
    from anogen.config import ResolvedConfig

AUTO_PRIOR_DIR = "_prior"


@dataclass(frozen=True)
class AutoPrior:
    """The prior a fit made or found for itself.

    Args:
        prior_dir (`Path`): the prior root (``RUNS/_prior``), what ``fit(prior_dir=...)`` takes.
        folder (`Path`): this category's prior, ``RUNS/_prior/<category>``.
        status (`str`): ``built`` (written now), ``reused`` (an earlier fit's, unchanged) or ``planned`` (a dry
            run: it would be built).
    """

    prior_dir: Path
    folder: Path
    status: Literal["built", "reused", "planned"]

    def message(self) -> str:
        """One line for the user."""
        if self.status == "reused":
            return f"BCM: reusing the prior in {self.folder} (built by an earlier fit; --prior DIR to use another)"
        if self.status == "planned":
            return f"BCM: no --prior given; fit will build the prior in {self.folder} (reused by later fits)"
        return f"BCM: no --prior given; built the prior in {self.folder} (reused by later fits)"


def needs_auto_prior(category: Category, config: ResolvedConfig, prior_dir: str | Path | None) -> bool:
    """Whether ``fit`` must make its own prior: BCM on, none given, and not a texture (there BCM is refused)."""
    return bool(config.adapter.bcm) and prior_dir is None and category.kind is not CategoryKind.TEXTURE


def auto_prior_dir(runs: str | Path) -> Path:
    """Where ``fit`` keeps the priors it builds: ``RUNS/_prior``."""
    return Path(runs) / AUTO_PRIOR_DIR


def ensure_auto_prior(
    category: Category,
    config: ResolvedConfig,
    runs: str | Path,
    *,
    dry_run: bool = False,
    build: bool = True,
    wait_s: float = 1800.0,
    progress: ProgressCallback | None = None,
) -> AutoPrior:
    """Build (or reuse) the prior of ``category`` in ``RUNS/_prior/<category>/`` for a BCM fit.

    Args:
        category (`Category`): as returned by ``anogen.data.read_category``.
        config (`ResolvedConfig`): the fit's config; ``train.shots`` decides which defect masks feed the
            prior's statistics (the training shots only, as with ``anogen prior --shots``).
        runs (`str | Path`): the fit's runs root.
        dry_run (`bool`, defaults to False): write nothing; say whether it would be built.
        build (`bool`, defaults to True): False in the other processes of a multi-process fit, which wait for the
            main process to build it instead of writing the same files at the same time.
        wait_s (`float`, defaults to 1800): how long such a process waits.
        progress (`ProgressCallback`, *optional*): receives ``prior <category>`` events.

    Raises:
        DataError: from :func:`anogen.priors.build_prior` (no normal images, an unreadable file).
        AnogenError: the main process did not finish the prior within ``wait_s``.
    """
    root = auto_prior_dir(runs)
    folder = root / safe_name(category.name)

    def run(dry: bool) -> bool:
        # preset_bcm=True: a category of unknown kind is an object here, as the BCM preset assumes.
        result = build_prior(
            category, root, kind="auto", preset_bcm=True, shots=config.train.shots, dry_run=dry, progress=progress
        )
        return result.up_to_date

    if dry_run or not build:
        deadline = time.monotonic() + (0.0 if dry_run else wait_s)
        while True:
            if run(True):
                return AutoPrior(root, folder, "reused")
            if dry_run:
                return AutoPrior(root, folder, "planned")
            if time.monotonic() > deadline:
                raise AnogenError(f"the main process did not finish the prior in {folder} within {wait_s:.0f} s")
            time.sleep(2.0)
    return AutoPrior(root, folder, "reused" if run(False) else "built")
