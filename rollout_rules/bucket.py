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


def murmur3_32_reference(data: bytes, seed: int = 0) -> int:
    """MurmurHash3 x86_32 in pure Python: the cross-check for mmh3 and the benchmark's baseline."""
    c1, c2, mask = 0xCC9E2D51, 0x1B873593, 0xFFFFFFFF
    h = seed & mask
    whole = len(data) - len(data) % 4
    for i in range(0, whole, 4):
        h ^= _scramble(int.from_bytes(data[i : i + 4], "little"), c1, c2)
        h = ((h << 13) | (h >> 19)) & mask
        h = (h * 5 + 0xE6546B64) & mask
    tail = data[whole:]
    if tail:
        h ^= _scramble(int.from_bytes(tail, "little"), c1, c2)
    h ^= len(data)
    h ^= h >> 16
    h = (h * 0x85EBCA6B) & mask
    h ^= h >> 13
    h = (h * 0xC2B2AE35) & mask
    return h ^ (h >> 16)


def _scramble(k: int, c1: int, c2: int) -> int:
    k = (k * c1) & 0xFFFFFFFF
    k = ((k << 15) | (k >> 17)) & 0xFFFFFFFF
    return (k * c2) & 0xFFFFFFFF
