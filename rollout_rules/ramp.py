"""A guarded ramp: a plan of steps, and the next move, decided from the rule and the guard.

``embedshift ramp ALIAS --steps 5,10,25,50,100 --every 10m`` stores a ``RampPlan``. One proxy
(the lease holder) asks ``next_move`` every tick and carries the answer out. A step is taken when
the current one has lasted ``every_s``, the guard's verdict on it is healthy (so it had enough
traffic: thin traffic holds the step, and the note says the guard's own reason), and coverage
allows the next share. A plan starts from the rule's share: steps at or below it are skipped,
so a ramp never lowers the share. A plan whose last step is 100% ends by promoting once that
step is judged healthy (unless made with ``promote=False``); while the promote is refused (not
verified, say) it holds, saying why. A breach is the guard's to act on (it rolls back); the plan
then stops, as it does when anyone changes the rule by hand. Pure: plan, rule, verdict and time
in, a move out.
"""

from __future__ import annotations

import itertools
from datetime import datetime
from enum import StrEnum
from typing import Annotated

import msgspec

from rollout_rules.errors import RuleError, TransitionError
from rollout_rules.guard import Outcome
from rollout_rules.model import Percent, Rollout, State

MAX_EVERY_S = 7 * 86400.0


class RampState(StrEnum):
    RUNNING = "running"
    PAUSED = "paused"
    DONE = "done"
    STOPPED = "stopped"  # rolled back, changed by hand, or aborted


class RampPlan(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    alias: str
    candidate: str
    steps: tuple[Percent, ...]
    every_s: Annotated[float, msgspec.Meta(gt=0)]
    state: RampState = RampState.RUNNING
    index: int = -1  # the step taken last; -1 before the first
    step_started: str = ""  # when it was taken (ISO 8601)
    step_revision: int = 0  # the rule revision it wrote
    note: str = ""  # why it waits, or why it stopped
    created_by: str = ""
    promote: bool = True  # promote once a last step of 100% is judged healthy


class RampAction(StrEnum):
    """What an operator may do to a plan."""

    PAUSE = "pause"
    RESUME = "resume"
    ABORT = "abort"


_ACTIONS = {RampAction.PAUSE: (RampState.RUNNING, RampState.PAUSED, "paused"),
            RampAction.RESUME: (RampState.PAUSED, RampState.RUNNING, "resumed"),
            RampAction.ABORT: (None, RampState.STOPPED, "aborted")}
"""Each action: the state it needs (None: any), the state after, and the word for the note."""


def ramp_action(text: str) -> RampAction:
    """An action's name as given (a path, a flag); RuleError naming the three."""
    try:
        return RampAction(text)
    except ValueError:
        raise RuleError("action", f"{text[:40]!r}: pause, resume or abort") from None


def controlled(plan: RampPlan, action: RampAction) -> RampPlan:
    """The plan after an operator's ``action``: the same plan when there is nothing to do (a
    pause of a paused plan, an abort of an ended one); TransitionError when it cannot be done
    (resuming a plan that is done or stopped)."""
    needed, after, done = _ACTIONS[action]
    if plan.state is after or (action is RampAction.ABORT
                                and plan.state in (RampState.DONE, RampState.STOPPED)):
        return plan
    if needed is not None and plan.state is not needed:
        raise TransitionError(f"{plan.alias}: the ramp is {plan.state}; cannot {action} it")
    return msgspec.structs.replace(plan, state=after, note=f"{done} by an operator")


class Move(StrEnum):
    ADVANCE = "advance"
    WAIT = "wait"
    FINISH = "finish"
    PROMOTE = "promote"
    STOP = "stop"


class Next(msgspec.Struct, frozen=True, kw_only=True):
    move: Move
    note: str
    percent: float | None = None


def new_plan(rollout: Rollout, steps: tuple[float, ...], every_s: float, actor: str, *,
             promote: bool = True) -> RampPlan:
    """A plan for the rule's candidate, from its current share on (steps at or below it are
    skipped: a ramp never lowers the share); RuleError naming the field when it cannot be
    one."""
    if rollout.candidate is None:
        raise RuleError("candidate", f"{rollout.alias} has no candidate to ramp")
    if not steps or any(not 0 < s <= 100 for s in steps) or \
            any(b <= a for a, b in itertools.pairwise(steps)):
        raise RuleError("steps", f"need rising percentages in (0, 100], got {list(steps)}")
    if any(abs(s * 100 - round(s * 100)) > 1e-6 for s in steps):
        raise RuleError("steps", "percentages have 0.01 resolution")
    if not 0 < every_s <= MAX_EVERY_S:
        raise RuleError("every", f"a step lasts more than 0 s and at most {MAX_EVERY_S:g} s "
                                 "(a week)")
    current = 0.0 if rollout.state is State.ROLLED_BACK else rollout.percent
    ahead = tuple(s for s in steps if s > current + 1e-9)
    if not ahead:
        raise RuleError("steps", f"{rollout.alias} is at {current:g}% already and a ramp never "
                                 f"lowers the share: every step of {list(steps)} is at or "
                                 "below it (`embedshift set` lowers it on purpose)")
    skipped = [f"{s:g}%" for s in steps if s not in ahead]
    note = (f"starts from the rule's {current:g}%; skipped {', '.join(skipped)}" if skipped
            else "")
    return RampPlan(alias=rollout.alias, candidate=rollout.candidate, steps=ahead,
                    every_s=every_s, created_by=actor, promote=promote, note=note)


def next_move(plan: RampPlan, rollout: Rollout, outcome: Outcome | None, cap_percent: float,
              now: datetime, *, why: str = "") -> Next:
    """What the ramp does now. ``outcome`` is the guard's verdict on the rule's current
    revision (None: none yet) and ``why`` its reason; ``cap_percent`` what coverage allows."""
    stopped = _stopped(plan, rollout)
    if stopped is not None:
        return Next(move=Move.STOP, note=stopped)
    if rollout.state is State.PAUSED:
        return Next(move=Move.WAIT, note="the rollout is paused; resume it to go on")
    if plan.index < 0:
        return _advance_to(plan.steps[0], 1, len(plan.steps), cap_percent)
    return _after_step(plan, outcome, cap_percent, now, why)


def _after_step(plan: RampPlan, outcome: Outcome | None, cap_percent: float, now: datetime,
                why: str) -> Next:
    """The move once a step was taken: wait it out, hold it, finish, or take the next."""
    n = len(plan.steps)
    percent = plan.steps[plan.index]
    left = plan.every_s - (now - datetime.fromisoformat(plan.step_started)).total_seconds()
    if left > 0:
        return Next(move=Move.WAIT, note=f"step {plan.index + 1}/{n} at {percent:g}%: "
                                         f"{left:.0f} s to go")
    if outcome is not Outcome.HEALTHY:
        said = {None: "the guard has not judged it yet",
                Outcome.NO_VERDICT: why or "no verdict",
                Outcome.BREACH: "the guard found a breach"}[outcome]
        return Next(move=Move.WAIT, note=f"holding step {plan.index + 1}/{n} at "
                                         f"{percent:g}%: {said}")
    if plan.index == n - 1:
        if percent >= 100 and plan.promote:
            return Next(move=Move.PROMOTE, note=f"every step healthy, the last at "
                                                f"{percent:g}%: promoting")
        return Next(move=Move.FINISH, note=f"every step taken; {percent:g}% stays until you "
                                           "promote")
    return _advance_to(plan.steps[plan.index + 1], plan.index + 2, n, cap_percent)


def _advance_to(percent: float, step: int, n: int, cap_percent: float) -> Next:
    if percent > cap_percent + 1e-9:
        return Next(move=Move.WAIT, note=f"step {step}/{n} wants {percent:g}%, coverage allows "
                                         f"{cap_percent:g}%: waiting for the backfill")
    return Next(move=Move.ADVANCE, note=f"step {step}/{n}: {percent:g}%", percent=percent)


def _stopped(plan: RampPlan, rollout: Rollout) -> str | None:
    if rollout.candidate != plan.candidate:
        if rollout.candidate is None and rollout.stable == plan.candidate:
            return f"{plan.candidate} was promoted by {rollout.updated_by or 'someone'}"
        if rollout.candidate is None:
            return f"{plan.candidate} is no longer the candidate (the rule has none)"
        return f"the candidate is now {rollout.candidate}, not {plan.candidate}"
    if rollout.state is State.ROLLED_BACK:
        return f"rolled back by {rollout.updated_by or 'someone'}: {rollout.reason}"
    if plan.index >= 0 and rollout.revision != plan.step_revision and \
            rollout.state is State.RAMPING and rollout.percent != plan.steps[plan.index]:
        return (f"{rollout.updated_by or 'someone'} set {rollout.percent:g}% by hand "
                f"(the plan was at {plan.steps[plan.index]:g}%)")
    return None
