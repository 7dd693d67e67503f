"""An in-memory rule store for fast unit tests: the same contract as the Redis store (tested by
one suite against both), kept in dictionaries, with notifications on asyncio queues.

``take_down()`` and ``bring_up()`` simulate an outage: while down every call raises
StoreUnavailable and every open change feed ends with it, as a lost Redis connection does.
``lose_everything()`` simulates data loss (FLUSHALL, a failover to an empty replica).
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator, Mapping

from msgspec.structs import replace

from proxy.state.base import (
    AuditEntry,
    CoverageBasis,
    OnSubscribed,
    ReportKind,
    SharedWrites,
    coverage_fields,
    coverage_fractions,
    lenient,
    now,
    parse_stored,
    report_field,
    stamp,
)
from rollout_rules.errors import ConflictError, NotFoundError, StoreUnavailable
from rollout_rules.model import Rollout, dump_rollout

_LOST = ("", -1)  # what a feed receives when the store goes down


class MemoryRuleStore(SharedWrites):
    def __init__(self) -> None:
        self._documents: dict[str, bytes] = {}
        self._revisions: dict[str, int] = {}
        self._audit: dict[str, list[AuditEntry]] = {}
        self._coverage: dict[str, dict[str, int]] = {}
        self._popularity: dict[str, dict[str, float]] = {}
        self._reports: dict[tuple[str, str], dict[str, object]] = {}
        self.unconfirmed: list[str] = []  # no replicas here: every write stands alone
        self._deleted: set[str] = set()
        self._guard: dict[str, dict[str, bytes]] = {}
        self._leases: dict[tuple[str, str], tuple[str, float]] = {}
        self._ramps: dict[str, bytes] = {}
        self._feeds: set[asyncio.Queue[tuple[str, int | None]]] = set()
        self._ids = itertools.count(1)
        self.available = True

    def take_down(self) -> None:
        self.available = False
        for feed in self._feeds:
            feed.put_nowait(_LOST)

    def bring_up(self) -> None:
        self.available = True

    def lose_everything(self) -> None:
        for kept in (self._documents, self._revisions, self._audit, self._coverage,
                     self._popularity, self._reports, self._guard, self._leases,
                     self._ramps):
            kept.clear()
        self._deleted.clear()

    def _check(self) -> None:
        if not self.available:
            raise StoreUnavailable("the in-memory rule store is down (take_down was called)")

    async def aclose(self) -> None:
        self._feeds.clear()

    async def aliases(self) -> list[str]:
        self._check()
        return sorted(self._documents)

    async def get(self, alias: str) -> Rollout:
        self._check()
        if alias not in self._documents:
            raise NotFoundError(alias)
        return parse_stored(alias, self._documents[alias])

    async def revision(self, alias: str) -> int:
        self._check()
        return self._revisions.get(alias, 0)

    async def history(self, alias: str, limit: int = 20) -> list[AuditEntry]:
        self._check()
        return list(reversed(self._audit.get(alias, [])))[:limit]

    async def deleted(self, alias: str) -> bool:
        self._check()
        return alias in self._deleted

    async def write(self, rollout: Rollout, expected_revision: int, actor: str,
                    reason: str, *, floor: int = 0) -> Rollout:
        self._check()
        self._expect(rollout.alias, expected_revision)
        stamped = stamp(rollout, expected_revision, actor, reason, floor)
        before = self._documents.get(rollout.alias, b"").decode()
        self._documents[rollout.alias] = dump_rollout(stamped)
        self._deleted.discard(rollout.alias)
        self._record(AuditEntry(id="", revision=stamped.revision, actor=actor, reason=reason,
                                at=stamped.updated_at, before=lenient(before), after=stamped))
        return stamped

    async def delete(self, alias: str, expected_revision: int, actor: str,
                     reason: str) -> AuditEntry:
        self._check()
        self._expect(alias, expected_revision)
        if alias not in self._documents:
            raise NotFoundError(alias)
        removed = parse_stored(alias, self._documents.pop(alias))
        self._deleted.add(alias)
        entry = AuditEntry(id="", revision=expected_revision + 1, actor=actor, reason=reason,
                           at=now(), before=removed, after=removed, deleted=True)
        return self._record(entry)

    def _expect(self, alias: str, expected_revision: int) -> None:
        current = self._revisions.get(alias, 0)
        if current != expected_revision:
            raise ConflictError(alias, expected_revision, current)

    def _record(self, entry: AuditEntry) -> AuditEntry:
        alias = entry.after.alias
        entry = replace(entry, id=f"{next(self._ids)}-0")
        self._revisions[alias] = entry.revision
        self._audit.setdefault(alias, []).append(entry)
        for feed in self._feeds:
            feed.put_nowait((alias, entry.revision))
        return entry

    async def set_coverage(self, alias: str, version: str, covered: int, total: int,
                           popular: float | None = None) -> None:
        self._check()
        self._coverage.setdefault(alias, {}).update(
            coverage_fields(version, covered, total, popular))
        for feed in self._feeds:
            feed.put_nowait((alias, None))

    async def coverage(self, alias: str, basis: CoverageBasis = "documents"
                       ) -> dict[str, float]:
        self._check()
        return coverage_fractions(self._coverage.get(alias, {}), basis)

    async def record_hits(self, alias: str, counts: Mapping[str, float]) -> None:
        self._check()
        scores = self._popularity.setdefault(alias, {})
        for point, count in counts.items():
            scores[point] = scores.get(point, 0.0) + count

    async def most_popular(self, alias: str, count: int) -> list[tuple[str, float]]:
        self._check()
        scores = self._popularity.get(alias, {})
        return sorted(scores.items(), key=lambda item: (-item[1], item[0]))[:count]

    async def put_report(self, alias: str, version: str, kind: ReportKind,
                         report: Mapping[str, object]) -> None:
        self._check()
        self._reports[(alias, report_field(version, kind))] = dict(report)

    async def report(self, alias: str, version: str, kind: ReportKind
                     ) -> dict[str, object] | None:
        self._check()
        return self._reports.get((alias, report_field(version, kind)))

    async def put_guard(self, alias: str, field: str, value: bytes) -> None:
        self._check()
        self._guard.setdefault(alias, {})[field] = value

    async def guard_records(self, alias: str) -> dict[str, bytes]:
        self._check()
        return dict(self._guard.get(alias, {}))

    async def drop_guard(self, alias: str, field: str) -> None:
        self._check()
        self._guard.get(alias, {}).pop(field, None)

    async def take_lease(self, alias: str, name: str, holder: str, ttl_s: float) -> bool:
        self._check()
        now = time.monotonic()
        current = self._leases.get((alias, name))
        if current is not None and current[0] != holder and current[1] > now:
            return False
        self._leases[(alias, name)] = (holder, now + ttl_s)
        return True

    async def put_ramp(self, alias: str, plan: bytes | None) -> None:
        self._check()
        if plan is None:
            self._ramps.pop(alias, None)
        else:
            self._ramps[alias] = plan

    async def ramp(self, alias: str) -> bytes | None:
        self._check()
        return self._ramps.get(alias)

    async def changes(self, on_subscribed: OnSubscribed = None
                      ) -> AsyncIterator[tuple[str, int | None]]:
        self._check()
        feed: asyncio.Queue[tuple[str, int | None]] = asyncio.Queue()
        self._feeds.add(feed)
        try:
            if on_subscribed is not None:
                await on_subscribed()
            while True:
                change = await feed.get()
                if change == _LOST:
                    raise StoreUnavailable("the in-memory rule store went down")
                yield change
        finally:
            self._feeds.discard(feed)
