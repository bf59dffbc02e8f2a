"""How ``anogen synth`` takes its verification settings: the ``verify:`` section of each job.

Kept out of :mod:`anogen.sample` (already large); no torch here.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from anogen.verify.config import VerifyConfig


def verify_config_for(
    record: Mapping[str, Any],
    verify: VerifyConfig | None,
    overrides: Mapping[str, Mapping[str, Any]] | None,
) -> VerifyConfig:
    """A job's effective verification settings.

    Args:
        record (`Mapping`): the adapter's ``adapter.json``; its recorded ``config.verify`` (its fit preset's) is
            the base. An adapter fitted before verification existed records none: the defaults apply (mode
            ``off``, today's behaviour).
        verify (`VerifyConfig`, *optional*): replaces the recorded section (``--preset`` / ``--config``).
        overrides (`Mapping`, *optional*): ``{"verify": {...}}`` on top (CLI flags); ``None`` values are ignored.
    """
    from anogen.config import resolve

    if verify is not None:
        base = verify.to_dict()
    else:
        base = dict(((record.get("config") or {}).get("verify")) or {})
    names = {f.name for f in dataclasses.fields(VerifyConfig)}
    # Drop fields this version does not know (an adapter from a later anogen) rather than refuse it.
    base = {k: v for k, v in base.items() if k in names}
    base.update({k: v for k, v in (overrides or {}).get("verify", {}).items() if v is not None})
    return resolve(overrides={"verify": base}).verify
