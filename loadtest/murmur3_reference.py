"""MurmurHash3 x86_32 in pure Python: the decide benchmark's baseline, and the cross-check the
tests hold mmh3 (what ``rollout_rules.bucket`` uses) against. Not used by the proxy."""

from __future__ import annotations


def murmur3_32(data: bytes, seed: int = 0) -> int:
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
