"""Seeds derived from names, so that attempt i's randomness depends on nothing but (seed, category, defect, i)."""

from __future__ import annotations

import hashlib


def derive_seed(*parts: object) -> int:
    """A 63-bit seed from the given parts, stable across Python versions, processes and machines.

    >>> derive_seed(0, "bottle", "broken_large", 7) == derive_seed(0, "bottle", "broken_large", 7)
    True
    """
    text = "/".join(str(p) for p in parts)
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "big") & ((1 << 63) - 1)
