"""The guarded ramp's scheduler: one leader per alias carries out ``rollout_rules.ramp``.

Every proxy runs it; for each alias with a running plan, the one holding the alias's ramp lease
(a Redis key with a TTL, renewed every tick) asks ``next_move`` and writes the answer: a step is
a compare-and-set ramp on the revision it judged, audited as "guarded ramp step i/n"; the plan
records the step, or why it waits, or why it stopped, for ``status``. If the leader dies its
lease expires and another proxy goes on from the stored plan.
"""

from __future__ import annotations

from datetime import UTC, datetime

import msgspec
import structlog
from msgspec.structs import replace

from proxy.control.operator import Operator, status_of
from proxy.control.verdicts import GuardStatus, read_plan
from proxy.state.answers import AnswerLog
from proxy.state.base import RuleStore
from rollout_rules.errors import ConflictError, TransitionError
from rollout_rules.model import Rollout
from rollout_rules.ramp import (
    Move,
    RampAction,
    RampPlan,
    RampState,
    controlled,
    new_plan,
    next_move,
)

log = structlog.get_logger("embedshift.ramp")
RAMP_ACTOR = "guarded-ramp"
LEASE = "ramp"


class RampScheduler:
    def __init__(self, store: RuleStore, instance: str, tick_s: float = 1.0,
                 answers: AnswerLog | None = None) -> None:
        self.store, self.instance, self.tick_s = store, instance, tick_s
        self.operator = Operator(store, RAMP_ACTOR, answers=answers)

    async def tick(self, rollout: Rollout, judged: GuardStatus | None = None
                   ) -> RampPlan | None:
        """Carry out the plan's next move if this instance leads; ``judged`` is the verdict
        the guard loop just reached (it counts only for the revision the leader reads)."""
        raw = await self.store.ramp(rollout.alias)
        plan = None if raw is None else read_plan(raw)
        if plan is None or plan.state is not RampState.RUNNING:
            return plan
        if not await self.store.take_lease(rollout.alias, LEASE, self.instance,
                                           max(3 * self.tick_s, 3.0)):
            return plan
        current = await self.store.get(rollout.alias)  # the leader acts on the stored rule
        fresh = judged if judged is not None and judged.revision == current.revision else None
        cap = status_of(current, await self.store.coverage(
            current.alias, current.coverage_gate.basis)).coverage_cap_percent
        now = datetime.now(UTC)
        found = next_move(plan, current, fresh.outcome if fresh else None, cap, now,
                          why=fresh.reason if fresh else "")
        if found.move is Move.ADVANCE and found.percent is not None:
            plan = await self._advance(plan, current, found.percent, found.note, now)
        elif found.move is Move.PROMOTE:
            plan = await self._promote(plan, current)
        elif found.move is Move.FINISH:
            plan = replace(plan, state=RampState.DONE, note=found.note)
        elif found.move is Move.STOP:
            plan = replace(plan, state=RampState.STOPPED, note=found.note)
        else:
            plan = replace(plan, note=found.note)
        await self.store.put_ramp(rollout.alias, msgspec.json.encode(plan))
        return plan

    async def _advance(self, plan: RampPlan, rollout: Rollout, percent: float, note: str,
                       now: datetime) -> RampPlan:
        try:
            change = await self.operator.set_percent(rollout.alias, percent,
                                                     f"guarded ramp {note}",
                                                     expected_revision=rollout.revision)
        except (ConflictError, TransitionError) as exc:
            return replace(plan, note=f"could not take {note}: {exc}")
        log.info("ramp_step", alias=rollout.alias, percent=percent, note=note)
        return replace(plan, index=plan.index + 1, step_started=now.isoformat(),
                       step_revision=change.after.revision, note=note)


    async def _promote(self, plan: RampPlan, rollout: Rollout) -> RampPlan:
        """The last step held: promote on the revision judged, or hold saying why not."""
        n = len(plan.steps)
        try:
            change = await self.operator.promote(
                rollout.alias, f"guarded ramp: {n} steps healthy, the last at 100%",
                expected_revision=rollout.revision)
        except (ConflictError, TransitionError) as exc:
            return replace(plan, note=f"holding step {n}/{n} at 100%, healthy: cannot promote "
                                      f"yet: {exc}")
        log.info("ramp_promoted", alias=rollout.alias, revision=change.after.revision)
        return replace(plan, state=RampState.DONE,
                       note=f"promoted {plan.candidate} at revision {change.after.revision}")


async def start_ramp(store: RuleStore, alias: str, steps: tuple[float, ...], every_s: float,
                     actor: str, *, promote: bool = True) -> RampPlan:
    """Store a new plan for the alias's candidate (replacing any earlier one)."""
    plan = new_plan(await store.get(alias), steps, every_s, actor, promote=promote)
    await store.put_ramp(alias, msgspec.json.encode(plan))
    return plan


async def control_ramp(store: RuleStore, alias: str, action: RampAction) -> RampPlan:
    """Pause, resume or abort the alias's plan (``rollout_rules.ramp.controlled``)."""
    raw = await store.ramp(alias)
    plan = None if raw is None else read_plan(raw)
    if plan is None:
        await store.get(alias)  # NotFoundError for an alias never declared
        raise TransitionError(f"{alias}: no guarded ramp is planned (start one with "
                              f"'embedshift ramp {alias} --steps 5,25,100 --every 10m')")
    after = controlled(plan, action)
    if after is not plan:
        await store.put_ramp(alias, msgspec.json.encode(after))
    return after
