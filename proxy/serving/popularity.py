"""Which documents answers return, recorded for the backfill (most-answered first).

A sampled share of answers adds its hits' document ids (as ``id_key`` text, the same in every
version and layout) to a counter in memory, on the request path at the
cost of a dict update; a background task adds the counts to Redis once a second, off the response
path. If Redis is down the counts are dropped (they are a priority hint, not data), and the
counter is bounded so a flood of distinct ids cannot grow it without end.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Sequence

import structlog

from proxy.state.base import Accounts
from proxy.tasks import Periodic
from proxy.vectors.base import Hit, id_key
from rollout_rules.errors import StoreUnavailable

log = structlog.get_logger("embedshift.popularity")
MAX_PENDING = 50_000  # distinct (alias, id) pairs kept between flushes


class HitRecorder:
    def __init__(self, store: Accounts, sample: float, flush_s: float = 1.0) -> None:
        self.store, self.sample, self.flush_s = store, sample, flush_s
        self.pending: dict[str, Counter[str]] = {}
        self._size = 0
        self._flusher = Periodic("popularity-flush", flush_s, self.flush)

    def record(self, alias: str, hits: Sequence[Hit]) -> None:
        """Count an answer's hits (by document id), if sampled."""
        if not hits or self.sample <= 0 or random.random() >= self.sample:
            return
        counts = self.pending.setdefault(alias, Counter())
        for hit in hits:
            key = id_key(hit.id)
            if key not in counts:
                if self._size >= MAX_PENDING:
                    continue
                self._size += 1
            counts[key] += 1

    async def flush(self) -> None:
        pending, self.pending, self._size = self.pending, {}, 0
        for alias, counts in pending.items():
            try:
                await self.store.record_hits(alias, counts)
            except StoreUnavailable as exc:
                log.warning("popularity_dropped", alias=alias, ids=len(counts), error=str(exc))

    def start(self) -> None:
        self._flusher.start()

    async def stop(self) -> None:
        await self._flusher.stop()
