"""Routed embeddings, for applications that embed their text themselves, and the space a vector
they send back belongs to.

``embed`` encodes texts with the model of the version the caller is routed to (as a search of
theirs would be; a failed candidate falls back to stable) and remembers each vector's
fingerprint with that version (``proxy.state.handed``); ``space_of`` is the version a vector was
handed out by, while it is remembered, declared and serving, so the query that follows is
searched where its vector was made, even after the rule moved, on any proxy.
"""

from __future__ import annotations

import time
from typing import NamedTuple

import structlog
from cachetools import LRUCache

from proxy.models.calling import Bucket
from proxy.models.encoders import clean_text
from proxy.models.loader import encoder_key
from proxy.serving.search import Searcher
from proxy.state.handed import HandedOut, fingerprint
from rollout_rules.errors import (
    BackendError,
    EncoderInputError,
    ModelError,
    RateLimited,
    RuleError,
    StoreUnavailable,
)
from rollout_rules.model import Rollout, Version

log = structlog.get_logger("embedshift.embed")
MAX_INPUTS = 256


class Embedded(NamedTuple):
    version: Version
    vectors: list[list[float]]


CALLERS = 10_000
"""Client addresses whose share is tracked, the least recent forgotten first."""


class Embedder:
    def __init__(self, searcher: Searcher, handed: HandedOut, ttl_s: float,
                 per_minute: int = 0) -> None:
        """``per_minute``: texts one caller may embed a minute on this proxy (0: no limit)."""
        self.searcher, self.handed, self.ttl_s = searcher, handed, ttl_s
        self.per_minute = per_minute
        self._shares: LRUCache[str, Bucket] = LRUCache(CALLERS)

    def admit(self, caller: str, texts: int) -> None:
        """RateLimited, saying how long to wait, when ``caller`` is past its share."""
        if not self.per_minute:
            return
        bucket = self._shares.get(caller)
        if bucket is None:
            bucket = self._shares[caller] = Bucket(self.per_minute)
        wait_s = bucket.take(texts, time.monotonic())
        if wait_s:
            raise RateLimited(f"more than {self.per_minute} texts a minute from your address: "
                              f"retry in {wait_s:.1f}s", wait_s)

    async def embed(self, alias: str, texts: list[str], user_id: str | None,
                    random_key: str) -> Embedded:
        if not 1 <= len(texts) <= MAX_INPUTS:
            raise RuleError("input", f"between 1 and {MAX_INPUTS} texts")
        cleaned = [_cleaned(n, text) for n, text in enumerate(texts)]
        rollout = self.searcher.rollout(alias)
        version = self.searcher.route(alias, user_id, random_key)
        try:
            vectors = await self._encode(alias, version, cleaned)
        except (BackendError, ModelError) as exc:
            if version.name == rollout.stable:
                raise
            log.warning("candidate_failed", alias=alias, version=version.name, error=str(exc),
                        answered_by=rollout.stable, route="embeddings")
            version = rollout.version(rollout.stable)
            vectors = await self._encode(alias, version, cleaned)
        try:
            dropped = await self.handed.remember(alias, version.name,
                                                 [fingerprint(v) for v in vectors], self.ttl_s)
            if dropped:
                self.searcher.metrics.child(self.searcher.metrics.handed_dropped, alias).inc(
                    dropped)
        except StoreUnavailable as exc:  # the answer still stands; its query goes to stable
            log.warning("handed_out_not_remembered", alias=alias, error=str(exc))
        return Embedded(version, vectors)

    async def _encode(self, alias: str, version: Version, texts: list[str]
                      ) -> list[list[float]]:
        blocked = self.searcher.unavailable.get((alias, version.name))
        encoder = self.searcher.encoders.get(encoder_key(version))
        if blocked is not None or encoder is None:
            raise ModelError(f"{alias}: version {version.name} is unavailable: "
                             f"{blocked or 'no encoder loaded'}")
        return [[float(x) for x in (await encoder.encode(text))[0]] for text in texts]

    async def space_of(self, alias: str, vector: list[float]) -> str | None:
        """The version that handed ``vector`` out, if remembered and still able to answer it;
        None: unknown here (the caller searches stable's space)."""
        rollout: Rollout = self.searcher.rollout(alias)
        try:
            name = await self.handed.recall(alias, fingerprint(vector))
        except StoreUnavailable as exc:
            log.warning("handed_out_unknown", alias=alias, error=str(exc))
            return None
        if name is None or name not in {v.name for v in rollout.versions} or \
                (alias, name) in self.searcher.unavailable:
            return None
        return name


def _cleaned(n: int, text: object) -> str:
    try:
        return clean_text(text)
    except EncoderInputError as exc:
        raise RuleError(f"input[{n}]", str(exc)) from None
