"""What each version's searches did, second by second: the guard's raw figures.

The request path adds to the current second's counts (a few dict updates); the guard loop asks
for the sum of the last seconds as ``Window``s, one per version. Counts belong to one rule
revision of an alias: when the revision moves (a ramp step, a pause, a rollback) the cohorts
changed, so counting starts again. Only the newest ``keep_s`` seconds are kept.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable

from rollout_rules.guard import LATENCY_BOUNDS_MS, Window, bucket_of, total


class _Counts:
    __slots__ = ("errors", "fallbacks", "latency", "overlap_n", "overlap_sq", "overlap_sum",
                 "requests", "searches", "slow")

    def __init__(self) -> None:
        self.requests = self.errors = self.fallbacks = self.searches = self.slow = 0
        self.overlap_n, self.overlap_sum, self.overlap_sq = 0, 0.0, 0.0
        self.latency = [0] * len(LATENCY_BOUNDS_MS)

    def window(self) -> Window:
        return Window(requests=self.requests, errors=self.errors, fallbacks=self.fallbacks,
                      searches=self.searches, slow=self.slow, latency=tuple(self.latency),
                      overlap_n=self.overlap_n, overlap_sum=self.overlap_sum,
                      overlap_sq=self.overlap_sq)


class _Alias:
    def __init__(self, revision: int) -> None:
        self.revision = revision
        self.seconds: deque[tuple[int, dict[str, _Counts]]] = deque()


class CohortRecorder:
    def __init__(self, keep_s: int = 3600, clock: Callable[[], float] = time.monotonic) -> None:
        self.keep_s, self.clock = keep_s, clock
        self._aliases: dict[str, _Alias] = {}

    def _now(self, alias: str, revision: int, version: str) -> _Counts:
        entry = self._aliases.get(alias)
        if entry is None or entry.revision != revision:
            if entry is not None and revision < entry.revision:
                return _Counts()  # a late answer decided under an older rule: not this cohort
            entry = self._aliases[alias] = _Alias(revision)
        second = int(self.clock())
        seconds = entry.seconds
        if not seconds or seconds[-1][0] != second:
            seconds.append((second, {}))
            while seconds[0][0] <= second - self.keep_s:
                seconds.popleft()
        counts = seconds[-1][1]
        found = counts.get(version)
        if found is None:
            found = counts[version] = _Counts()
        return found

    def answered(self, alias: str, revision: int, version: str, *, failed: bool = False,
                 fallback: bool = False) -> None:
        """One search attempted by ``version``: failed (its encoder or store), and answered by
        stable instead (a fallback)."""
        counts = self._now(alias, revision, version)
        counts.requests += 1
        counts.errors += failed
        counts.fallbacks += fallback

    def searched(self, alias: str, revision: int, version: str, ms: float, slow_ms: float
                 ) -> None:
        """One store search of ``version`` took ``ms`` (slow above ``slow_ms``)."""
        counts = self._now(alias, revision, version)
        counts.searches += 1
        counts.slow += ms > slow_ms
        counts.latency[bucket_of(ms)] += 1

    def compared(self, alias: str, revision: int, version: str, overlap: float) -> None:
        """A shadow comparison of stable's answer with ``version``'s: overlap@10."""
        counts = self._now(alias, revision, version)
        counts.overlap_n += 1
        counts.overlap_sum += overlap
        counts.overlap_sq += overlap * overlap

    def window(self, alias: str, seconds: float) -> tuple[int, dict[str, Window]] | None:
        """The revision counted and each version's sum over the last ``seconds``."""
        entry = self._aliases.get(alias)
        if entry is None:
            return None
        since = int(self.clock()) - seconds
        per_version: dict[str, list[Window]] = {}
        for second, counts in entry.seconds:
            if second > since:
                for version, found in counts.items():
                    per_version.setdefault(version, []).append(found.window())
        return entry.revision, {version: total(found) for version, found in per_version.items()}
