"""The guard loop: every instance's counts merged through Redis, judged, and acted on once.

Each tick, for every alias it serves, a proxy:

1. publishes its own counts of the rule's current revision (the last ``window_s`` seconds, per
   version) under its instance id in the alias's guard hash;
2. if a version is under test (``rollout_rules.guard.cohorts``), sums every instance's fresh
   counts of that revision and asks ``verdict``;
3. records the verdict (``embedshift status`` and ``/admin`` show it) and, on a breach, rolls
   the alias back by compare-and-set on the revision it judged: every instance may see the same
   breach, exactly one write succeeds, so there is one rollback and one audit entry.

If Redis cannot be reached the guard neither judges nor acts (fail static): it never rolls
back on half the figures.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import UTC, datetime

import msgspec
import structlog

from proxy.control.operator import Operator
from proxy.control.ramp import RampScheduler
from proxy.control.verdicts import (
    INSTANCE_PREFIX,
    VERDICT_FIELD,
    GuardStatus,
    InstanceCounts,
    merged_windows,
)
from proxy.state.answers import AnswerLog
from proxy.state.base import RuleStore
from proxy.tasks import cancel_and_wait
from proxy.telemetry import Metrics
from rollout_rules.errors import ConflictError, EmbedshiftError, StoreUnavailable
from rollout_rules.guard import (
    Cohorts,
    Outcome,
    Verdict,
    Window,
    judge,
    watched,
)
from rollout_rules.model import Rollout
from rollout_rules.online import online_breach, online_figures, online_table

log = structlog.get_logger("embedshift.guard")
GUARD_ACTOR = "guard"
_GAUGE = {Outcome.HEALTHY: 1, Outcome.NO_VERDICT: 0, Outcome.BREACH: -1}


Windows = Callable[[str, float], "tuple[int, dict[str, Window]] | None"]


class GuardLoop:
    def __init__(self, store: RuleStore, rollouts: Callable[[], dict[str, Rollout]],
                 windows: Windows, metrics: Metrics, *, instance: str, tick_s: float = 1.0,
                 ramp: RampScheduler | None = None, answers: AnswerLog | None = None) -> None:
        self.store, self.rollouts, self.windows = store, rollouts, windows
        self.metrics, self.instance, self.tick_s = metrics, instance, tick_s
        self.ramp = ramp
        self.operator = Operator(store, GUARD_ACTOR, answers=answers)
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self.tick_s > 0:
            self._task = asyncio.create_task(self._run(), name="guard")

    async def stop(self) -> None:
        if self._task is not None:
            await cancel_and_wait([self._task])

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.tick_s)
            for rollout in list(self.rollouts().values()):
                try:
                    judged = await self.tick(rollout)
                    if self.ramp is not None:
                        await self.ramp.tick(rollout, judged)
                except StoreUnavailable as exc:
                    log.warning("guard_blind", alias=rollout.alias, error=str(exc))
                except EmbedshiftError as exc:  # a rule it cannot judge: say so, keep going
                    log.error("guard_failed", alias=rollout.alias, error=str(exc))

    async def tick(self, rollout: Rollout) -> GuardStatus | None:
        """Publish this instance's counts, judge the alias, act on a breach."""
        alias = rollout.alias
        local = self.windows(alias, rollout.guard.window_s)
        if local is not None and local[0] == rollout.revision:
            counts = InstanceCounts(revision=rollout.revision, at=time.time(), windows=local[1])
            await self.store.put_guard(alias, INSTANCE_PREFIX + self.instance,
                                       msgspec.json.encode(counts))
        now = datetime.now(UTC)
        pair = watched(rollout, now)
        if pair is None:
            return None
        merged, instances = await self.merged(rollout)
        found = judge(pair, merged, rollout.guard)
        if not pair.dark:
            found = await self.online(rollout, pair, found)
        status = GuardStatus(revision=rollout.revision, at=now.isoformat(timespec="seconds"),
                             test=pair.test, baseline=pair.baseline, watching=pair.watching,
                             outcome=found.outcome, reason=found.reason, figures=found.figures,
                             instances=instances)
        self.metrics.child(self.metrics.guard_state, alias).set(_GAUGE[found.outcome])
        await self.store.put_guard(alias, VERDICT_FIELD, msgspec.json.encode(status))
        if found.breach:
            await self.roll_back(rollout, found)
        return status

    async def online(self, rollout: Rollout, pair: Cohorts, found: Verdict) -> Verdict:
        """The verdict with the online evidence beside it: its figures added, and a significant
        loss of users' quality (``rollout_rules.online.online_breach``) a breach like any other.
        Shared counts, so every instance reads the same evidence."""
        counts = await self.operator.online_counts(rollout.alias)
        if not counts:
            return found
        self.metrics.publish_online(rollout.alias, online_table(
            counts, [pair.test, pair.baseline], [(pair.test, pair.baseline)]))
        figures = {**found.figures, **online_figures(counts, pair.test, pair.baseline)}
        breached = None if found.breach else online_breach(counts, pair.test, pair.baseline,
                                                           rollout.guard)
        if breached is None:
            return msgspec.structs.replace(found, figures=figures)
        return Verdict(outcome=Outcome.BREACH, reason=f"online quality: {breached}",
                       figures=figures)

    async def merged(self, rollout: Rollout) -> tuple[dict[str, Window], int]:
        """Every instance's fresh counts of the rule's revision, summed per version; and how
        many instances they came from. Counts older than three ticks are an instance gone."""
        return await merged_windows(self.store, rollout, max(3 * self.tick_s, 3.0))

    async def roll_back(self, rollout: Rollout, found: Verdict) -> None:
        """Roll back the revision judged; a lost compare-and-set means another instance (or an
        operator) changed the rule first, and this one does nothing."""
        try:
            change = await self.operator.rollback(rollout.alias, f"guard: {found.reason}",
                                                  expected_revision=rollout.revision)
        except ConflictError:
            return
        if change.changed:
            self.metrics.child(self.metrics.guard_rollbacks, rollout.alias, GUARD_ACTOR).inc()
            log.warning("guard_rolled_back", alias=rollout.alias, reason=found.reason,
                        revision=change.after.revision)
