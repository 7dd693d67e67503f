"""Shadow traffic: a share of stable's queries also asked of the other version, off the path.

After a version has answered a user, ``Shadow.maybe`` may start a background search of the same
query in another (``rollout_rules.guard.shadow_of``): stable's queries go to the version the guard
watches (the candidate while it ramps, the previous stable after a promote), the candidate's go
to stable while it ramps, as the guard's baseline. The user's answer never waits for it. At
most ``concurrency`` shadows run at once; beyond that a shadow is dropped (and counted), so under
load shadows go first. Each finished shadow records the overlap@k of the two id lists (k = the
request's limit, at most 10), the rank correlation of the ids both share, and the shadowed
version's latency and failures, as metrics and as guard inputs. Hits speak document ids, so two
versions compare in every layout (a shared collection included).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Protocol

import structlog

from proxy.serving.cohorts import CohortRecorder
from proxy.serving.query import Found, Query
from proxy.tasks import cancel_and_wait
from proxy.telemetry import Metrics
from proxy.vectors.base import Hit, PointId
from rollout_rules.errors import BackendError, ModelError
from rollout_rules.guard import shadow_of
from rollout_rules.model import Rollout, Version

log = structlog.get_logger("embedshift.shadow")
TOP_K = 10


class Source(Protocol):
    """What a shadow asks of the searcher."""

    cohorts: CohortRecorder
    deadline_s: float

    async def find(self, alias: str, version: Version, query: Query) -> Found: ...


class Shadow:
    def __init__(self, metrics: Metrics, concurrency: int = 4) -> None:
        self.metrics, self.concurrency = metrics, concurrency
        self.tasks: set[asyncio.Task[None]] = set()

    def maybe(self, source: Source, rollout: Rollout, served: str, query: Query,
              hits: Sequence[Hit]) -> None:
        """Start a shadow of ``query``, answered by ``served``, if the rule asks for one
        (``rollout_rules.guard.shadow_of``) and this query is drawn."""
        found = shadow_of(rollout, served, datetime.now(UTC))
        if found is None:
            return
        target, share = found
        if share <= 0 or random.random() >= share:
            return
        if len(self.tasks) >= self.concurrency:
            self.metrics.child(self.metrics.shadows, rollout.alias, target, "dropped").inc()
            return
        ids = [hit.id for hit in hits]
        task = asyncio.create_task(self._run(source, rollout, rollout.version(target), query,
                                             ids, served=served))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _run(self, source: Source, rollout: Rollout, version: Version, query: Query,
                   served_ids: list[PointId], *, served: str) -> None:
        """Search ``version`` too; its figures count as its own searches, and the overlap of
        the two answers is kept on the version under test (whichever is not stable)."""
        alias, metrics = rollout.alias, self.metrics
        k = min(TOP_K, query.asked.limit)
        deadline = asyncio.get_running_loop().time() + source.deadline_s
        started = time.perf_counter()
        try:
            found = await source.find(alias, version, query._replace(deadline=deadline))
        except (BackendError, ModelError, TimeoutError) as exc:
            source.cohorts.answered(alias, query.revision, version.name, failed=True)
            metrics.child(metrics.shadows, alias, version.name, "failed").inc()
            log.info("shadow_failed", alias=alias, version=version.name, error=str(exc))
            return
        source.cohorts.answered(alias, query.revision, version.name)
        metrics.child(metrics.shadow_latency, alias, version.name).observe(
            time.perf_counter() - started)
        shadow_ids = [hit.id for hit in found.hits]
        tested = served if version.name == rollout.stable else version.name
        overlap = overlap_at(served_ids, shadow_ids, k)
        source.cohorts.compared(alias, query.revision, tested, overlap)
        metrics.child(metrics.shadows, alias, version.name, "compared").inc()
        metrics.child(metrics.shadow_overlap, alias, tested).observe(overlap)
        correlation = rank_correlation(served_ids[:k], shadow_ids[:k])
        if correlation is not None:
            metrics.child(metrics.shadow_rank_correlation, alias, tested).observe(correlation)

    async def close(self) -> None:
        await cancel_and_wait(self.tasks)


def overlap_at(a: Sequence[object], b: Sequence[object], k: int) -> float:
    """The share of the top ``k`` of ``a`` also in the top ``k`` of ``b`` (1.0 when both are
    empty: two versions that agree nothing matches agree)."""
    top_a, top_b = set(a[:k]), set(b[:k])
    size = max(len(top_a), len(top_b))
    return len(top_a & top_b) / size if size else 1.0


def rank_correlation(a: Sequence[object], b: Sequence[object]) -> float | None:
    """Spearman's rho of the ids both lists hold, by their ranks in each; None under two."""
    in_b = set(b)
    common = [item for item in a if item in in_b]
    n = len(common)
    if n < 2:
        return None
    shared = set(common)
    rank_b = {item: i for i, item in enumerate(item for item in b if item in shared)}
    squared = sum((i - rank_b[item]) ** 2 for i, item in enumerate(common))
    return 1 - 6 * squared / (n * (n * n - 1))
