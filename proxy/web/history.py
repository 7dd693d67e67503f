"""The last few minutes of each version's figures on this proxy, for the status page's charts.

Every ``step_s`` a sampler reads the proxy's own counters (answers, errors, fallbacks and the
whole-request latency histogram, per alias and version) and keeps, per step, the rate and the
p50/p99 of what happened during that step (from the histogram's bucket deltas), for the last
``points`` steps. Reading and differencing are pure functions; the loop is the only I/O.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import Mapping, Sequence

import msgspec
from prometheus_client import CollectorRegistry

from proxy.tasks import cancel_and_wait

Key = tuple[str, str]  # (alias, version)


class Totals(msgspec.Struct, frozen=True):
    """Cumulative counts of one version at one moment."""

    answers: float = 0.0
    errors: float = 0.0
    fallbacks: float = 0.0
    buckets: tuple[tuple[float, float], ...] = ()  # (upper bound, cumulative count)


class Point(msgspec.Struct, frozen=True):
    """One step of one version: when it ended (unix s), answers/s, errors/s, latency ms."""

    t: float
    rps: float
    errors: float
    p50_ms: float | None
    p99_ms: float | None


def read_totals(registry: CollectorRegistry) -> dict[Key, Totals]:
    """Each (alias, version)'s cumulative counts, from the proxy's metrics registry."""
    counts: dict[Key, dict[str, float]] = {}
    buckets: dict[Key, list[tuple[float, float]]] = {}
    names = {"embedshift_requests_total": "answers", "embedshift_errors_total": "errors",
             "embedshift_fallbacks_total": "fallbacks"}
    for family in registry.collect():
        for sample in family.samples:
            labels = sample.labels
            if "alias" not in labels or "version" not in labels:
                continue
            key = (labels["alias"], labels["version"])
            if sample.name in names:
                field = counts.setdefault(key, {})
                field[names[sample.name]] = field.get(names[sample.name], 0.0) + sample.value
            elif sample.name == "embedshift_request_seconds_bucket":
                buckets.setdefault(key, []).append((float(labels["le"]), sample.value))
    return {key: Totals(**counts.get(key, {}), buckets=tuple(sorted(buckets.get(key, []))))
            for key in counts.keys() | buckets.keys()}


def quantile(q: float, buckets: Sequence[tuple[float, float]]) -> float | None:
    """The q-quantile of a cumulative histogram, interpolated inside its bucket as Prometheus'
    ``histogram_quantile`` does; None without observations."""
    if not buckets or buckets[-1][1] <= 0:
        return None
    rank = q * buckets[-1][1]
    lower_bound, lower_count = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if math.isinf(bound):
                return lower_bound
            share = (rank - lower_count) / (count - lower_count) if count > lower_count else 1.0
            return lower_bound + (bound - lower_bound) * share
        lower_bound, lower_count = bound, count
    return lower_bound


def step(before: Totals, after: Totals, seconds: float, now: float) -> Point:
    """What happened between two readings of one version."""
    earlier = dict(before.buckets)
    delta = [(bound, count - earlier.get(bound, 0.0)) for bound, count in after.buckets]
    p50, p99 = quantile(0.5, delta), quantile(0.99, delta)
    return Point(t=round(now, 3), rps=(after.answers - before.answers) / seconds,
                 errors=(after.errors + after.fallbacks - before.errors - before.fallbacks)
                 / seconds,
                 p50_ms=None if p50 is None else round(p50 * 1000, 3),
                 p99_ms=None if p99 is None else round(p99 * 1000, 3))


class History:
    def __init__(self, registry: CollectorRegistry, step_s: float = 5.0, points: int = 60
                 ) -> None:
        self.registry, self.step_s, self.points = registry, step_s, points
        self.series: dict[Key, deque[Point]] = {}
        self._last: tuple[float, dict[Key, Totals]] | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    def sample(self, now: float | None = None) -> None:
        """Read the counters and append each version's step since the last reading."""
        now = time.time() if now is None else now
        totals = read_totals(self.registry)
        if self._last is not None and now > self._last[0]:
            seconds = now - self._last[0]
            for key, after in totals.items():
                point = step(self._last[1].get(key, Totals()), after, seconds, now)
                self.series.setdefault(key, deque(maxlen=self.points)).append(point)
        self._last = (now, totals)

    def of(self, alias: str) -> dict[str, list[Point]]:
        return {version: list(points) for (name, version), points in self.series.items()
                if name == alias}

    def start(self) -> None:
        self.sample()
        self._tasks.add(asyncio.create_task(self._run(), name="ui-history"))

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.step_s)
            self.sample()

    async def stop(self) -> None:
        await cancel_and_wait(self._tasks)


def shadow_overlap(registry: CollectorRegistry, alias: str) -> Mapping[str, float]:
    """Mean overlap@10 of each shadowed version of ``alias`` since this proxy started."""
    sums: dict[str, list[float]] = {}
    for family in registry.collect():
        for sample in family.samples:
            if sample.labels.get("alias") != alias or sample.name not in (
                    "embedshift_shadow_overlap_sum", "embedshift_shadow_overlap_count"):
                continue
            pair = sums.setdefault(sample.labels["version"], [0.0, 0.0])
            pair[0 if sample.name.endswith("_sum") else 1] += sample.value
    return {version: round(total / count, 4) for version, (total, count) in sums.items()
            if count}
