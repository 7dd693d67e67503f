"""Recent answers, per model version: the same query to the same version within a short TTL is
answered without encoding or searching again.

A hit list is only meaningful for the version that produced it, so the key holds the whole
version envelope (model, quantisation, query prefix, collection, named vector, payload match)
besides the cleaned text, limit, filter and ``with_payload``: a v1 answer can never reach a user
routed to v2, and a version redeclared with another model or target starts afresh.

Staleness is bounded two ways. Each entry remembers the version's backfill coverage when it was
stored; once the backfill reports progress (new documents in that collection) the entry no longer
counts. Writes the proxy cannot see are bounded by the TTL (``EMBEDSHIFT_RESULT_CACHE_TTL_S``,
2 s by default; 0 turns the cache off).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import msgspec
from cachetools import TTLCache

from proxy.vectors.base import Hit
from rollout_rules.model import Version

Key = tuple[bytes, str, int, bytes, bool, bytes]
_encode = msgspec.json.Encoder().encode


class ResultCache:
    def __init__(self, size: int, ttl_s: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._entries: TTLCache[Key, tuple[float | None, list[Hit]]] | None = (
            TTLCache(size, ttl_s, timer=clock) if size > 0 and ttl_s > 0 else None)  # else off
        self._envelopes: dict[tuple[str, str], tuple[Version, bytes]] = {}

    def key(self, version: Version, text: str, limit: int, raw_filter: dict[str, Any] | None,
            with_payload: bool, *, fused: bytes = b"") -> Key:
        """What decides a version's answer; ``text`` is already whitespace-normalised;
        ``fused``: the searches fused with the text's, encoded."""
        return (self._envelope(version), text, limit,
                b"" if raw_filter is None else _encode(raw_filter), with_payload, fused)

    def _envelope(self, version: Version) -> bytes:
        """The version encoded, once per declared version: the rules snapshot keeps the same
        objects until a rule changes, and a changed version (or another alias's of the same
        name and collection) is told apart by equality and encoded afresh."""
        slot = (version.name, version.target.collection)
        known = self._envelopes.get(slot)
        if known is None or (known[0] is not version and known[0] != version):
            if len(self._envelopes) >= 1024:  # versions long deleted: start afresh
                self._envelopes.clear()
            known = self._envelopes[slot] = (version, _encode(version))
        return known[1]

    def get(self, key: Key, coverage: float | None) -> list[Hit] | None:
        """The stored hits, unless absent, expired or from before the backfill's last report."""
        entry = self._entries.get(key) if self._entries is not None else None
        if entry is None or entry[0] != coverage:
            return None
        return entry[1]

    def put(self, key: Key, coverage: float | None, hits: list[Hit]) -> None:
        if self._entries is not None:
            self._entries[key] = (coverage, hits)

    def __len__(self) -> int:
        return 0 if self._entries is None else len(self._entries)
