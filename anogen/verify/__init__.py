"""Verified samples: a normal model per category and per-sample checks (``anogen synth``, ``anogen verify``).

Importing this package imports no torch; the model code imports it lazily.

- :mod:`anogen.verify.config`: :class:`VerifyConfig`, every parameter and threshold;
- :mod:`anogen.verify.normal`: :class:`NormalModel` and :func:`build_normal_model` (VAE-feature memory bank);
- :mod:`anogen.verify.cache`: :func:`load_or_build_normal_model` (safetensors + JSON keyed by input hashes);
- :mod:`anogen.verify.shots`: :class:`ShotBank`, the ``copy`` check's reference;
- :mod:`anogen.verify.checks`: the checks as pure functions and :func:`reject_reason`.

See docs/verify.md.
"""

from anogen.verify.checks import REASONS, CheckScores, alignment_score, background_score, reject_reason, score_sample
from anogen.verify.config import VerifyConfig

__all__ = [
    "REASONS",
    "CheckScores",
    "VerifyConfig",
    "alignment_score",
    "background_score",
    "reject_reason",
    "score_sample",
]
