"""Sticky bucketing, compatible with Unleash's ``normalizedValue``.

``bucket(group, key)`` is murmur3 (x86, 32-bit, seed 0, unsigned) of ``"group:key"`` modulo the
normaliser, plus one, so it lies in 1..normaliser. With normaliser 100 it is exactly Unleash's value
(a user is in a p% rollout when bucket <= p); the proxy uses 10,000 so 0.01% steps exist. Since the
hash depends only on its input, every process gives the same user the same bucket, and raising the
percent only ever adds users.
"""

from __future__ import annotations

import mmh3

UNLEASH_NORMALISER = 100
NORMALISER = 10_000


def bucket(group: str, key: str, normaliser: int = NORMALISER) -> int:
    """The user's bucket in 1..normaliser."""
    return int(mmh3.hash(f"{group}:{key}", 0, False)) % normaliser + 1
