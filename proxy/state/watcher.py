"""The in-memory rules snapshot every proxy serves from, kept fresh in the background.

The request path reads ``watcher.rollouts`` and ``watcher.coverage`` (plain dicts, replaced whole,
never mutated) and never awaits Redis. Two background tasks keep them fresh: a pub/sub listener
that re-reads an alias the moment its change is announced, and a periodic full re-read that
covers anything the listener missed. On every (re)subscription a full read runs too, so a
message lost during an outage cannot leave a stale rule behind.

Fail static: if Redis is unreachable the last good snapshot stays in force and ``connected`` says
so. A stored document that does not parse is refused: the last good rule for that alias stays and
``rejected`` names the fault. An alias that disappears from the store without a deletion (a
FLUSHALL, a failover to an empty replica) is kept too, with its coverage, and ``vanished`` says
so until an operator restores it (any revision is then accepted: the store's count restarted)
or deletes it on purpose, which leaves a tombstone every watcher obeys.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import TypeVar

import structlog

from proxy.state.base import RuleStore
from proxy.tasks import cancel_and_wait
from rollout_rules.errors import NotFoundError, RuleError, StoreUnavailable
from rollout_rules.model import Rollout

log = structlog.get_logger("embedshift.rules")

T = TypeVar("T")
OnChange = Callable[[str, Rollout | None, Rollout | None], None]


class RuleWatcher:
    def __init__(self, store: RuleStore, refresh_interval_s: float = 5.0,
                 on_change: OnChange | None = None) -> None:
        self.store = store
        self.refresh_interval_s = refresh_interval_s
        self.on_change = on_change
        self.rollouts: dict[str, Rollout] = {}
        self.coverage: dict[str, dict[str, float]] = {}
        self.rejected: dict[str, str] = {}
        self.vanished: dict[str, str] = {}
        self.connected = False
        self.last_error: str | None = None
        self._last_refresh: float | None = None
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def age_s(self) -> float | None:
        """Seconds since the last full read that succeeded."""
        return None if self._last_refresh is None else time.monotonic() - self._last_refresh

    async def start(self) -> None:
        """Load once (fail static if Redis is down), then keep fresh in the background."""
        with contextlib.suppress(StoreUnavailable):
            await self.refresh_all()
        self._tasks = [asyncio.create_task(self._listen(), name="rules-listen"),
                       asyncio.create_task(self._poll(), name="rules-poll")]

    async def stop(self) -> None:
        """Cancel the background tasks until each has finished (a single cancel was lost in
        about one stop in four: see ``proxy.tasks``)."""
        await cancel_and_wait(self._tasks)
        self._tasks = []

    async def refresh_all(self) -> None:
        try:
            aliases = await self.store.aliases()
            for alias in aliases:
                await self.refresh_alias(alias)
            for gone in set(self.rollouts) - set(aliases):
                await self._gone(gone)
            coverage = {alias: await self._coverage_of(alias) for alias in aliases}
            kept = {alias: self.coverage[alias] for alias in self.vanished
                    if alias in self.coverage}
            self.coverage = {**coverage, **kept}
        except StoreUnavailable as exc:
            self._mark_down(exc)
            raise
        self.connected, self.last_error = True, None
        self._last_refresh = time.monotonic()

    async def _coverage_of(self, alias: str) -> dict[str, float]:
        """The figure the alias's coverage gate reads (documents, or popularity)."""
        rollout = self.rollouts.get(alias)
        basis = rollout.coverage_gate.basis if rollout is not None else "documents"
        return await self.store.coverage(alias, basis)

    async def refresh_coverage(self, alias: str) -> None:
        """Re-read one alias's coverage: the backfill announced progress."""
        if alias in self.rollouts and alias not in self.vanished:
            self.coverage = {**self.coverage, alias: await self._coverage_of(alias)}

    async def follow(self, alias: str, within_s: float = 2.0) -> None:
        """Re-read one alias and its coverage now, for a write this proxy just made (so a
        search through it right after sees the change). Bounded, and never raises: the store
        holds the change, and the background tasks catch up if this read cannot."""
        with contextlib.suppress(StoreUnavailable, TimeoutError):
            async with asyncio.timeout(within_s):
                await self._reread(alias)

    async def _reread(self, alias: str) -> None:
        """One alias's rule changed: its rule, then its coverage (the gate's basis may have
        changed with it)."""
        await self.refresh_alias(alias)
        await self.refresh_coverage(alias)

    async def refresh_alias(self, alias: str) -> None:
        try:
            rollout = await self.store.get(alias)
        except NotFoundError:
            await self._gone(alias)
            return
        except RuleError as exc:
            self.rejected = {**self.rejected, alias: str(exc)}
            log.warning("rule_rejected", alias=alias, error=str(exc),
                        kept_revision=getattr(self.rollouts.get(alias), "revision", None))
            return
        self._install(alias, rollout)

    async def _gone(self, alias: str) -> None:
        """The store has no rule for an alias we serve: deleted on purpose, or lost."""
        if alias not in self.rollouts:
            return
        if await self.store.deleted(alias):
            self.vanished = _without(self.vanished, alias)
            self._install(alias, None)
        elif alias not in self.vanished:
            kept = self.rollouts[alias].revision
            self.vanished = {**self.vanished, alias: (
                f"gone from the rule store without a deletion; serving revision {kept} from "
                f"memory until it is restored (POST /admin/aliases/{alias}/restore) or deleted")}
            log.error("alias_vanished", alias=alias, kept_revision=kept,
                      action="restore or delete it")

    def _install(self, alias: str, rollout: Rollout | None) -> None:
        current = self.rollouts.get(alias)
        if alias in self.rejected:
            self.rejected = _without(self.rejected, alias)
        if alias in self.vanished and rollout is not None:
            self.vanished = _without(self.vanished, alias)
            log.warning("alias_back", alias=alias, revision=rollout.revision)
        elif rollout is not None and current is not None and \
                rollout.revision <= current.revision:
            return  # a slower read of an older revision must not win
        if rollout is None:
            self.rollouts = _without(self.rollouts, alias)
        else:
            self.rollouts = {**self.rollouts, alias: rollout}
        if self.on_change is not None and current != rollout:
            self.on_change(alias, current, rollout)

    async def _listen(self) -> None:
        backoff = 0.05
        while True:
            try:
                async for alias, revision in self.store.changes(on_subscribed=self.refresh_all):
                    backoff = 0.05
                    current = self.rollouts.get(alias)
                    if revision is None:
                        await self.refresh_coverage(alias)
                    elif current is None or revision > current.revision:
                        await self._reread(alias)
            except StoreUnavailable as exc:
                self._mark_down(exc)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, self.refresh_interval_s)

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self.refresh_interval_s)
            with contextlib.suppress(StoreUnavailable):
                await self.refresh_all()

    def _mark_down(self, exc: StoreUnavailable) -> None:
        if self.connected or self.last_error is None:
            log.warning("rules_store_unreachable", error=str(exc), serving="last good snapshot",
                        aliases=len(self.rollouts))
        self.connected, self.last_error = False, str(exc)


def _without(mapping: dict[str, T], key: str) -> dict[str, T]:
    """A new dict without ``key``: the snapshot's dicts are replaced whole, never mutated."""
    return {k: v for k, v in mapping.items() if k != key}
