"""A guarded ramp steps only after a healthy, long-enough step that coverage allows; else waits."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from msgspec.structs import replace

from rollout_rules.errors import RuleError, TransitionError
from rollout_rules.guard import Outcome
from rollout_rules.model import Rollout, State
from rollout_rules.ramp import (
    Move,
    RampAction,
    RampPlan,
    RampState,
    controlled,
    new_plan,
    next_move,
    ramp_action,
)
from tests.unit.core.rollouts import rollout as make_rollout

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def started(percent: float = 5, index: int = 0, revision: int = 2, promote: bool = True
            ) -> tuple[RampPlan, Rollout]:
    """A plan made at 0% that has taken step ``index`` (at ``percent``)."""
    plan = replace(new_plan(make_rollout(percent=0), (5, 25, 100), 60, "ops", promote=promote),
                   index=index, step_started=T0.isoformat(), step_revision=revision)
    return plan, replace(make_rollout(percent=percent), revision=revision)


def test_the_first_step_is_taken_at_once_if_coverage_allows() -> None:
    rollout = make_rollout(percent=0)
    plan = new_plan(rollout, (5, 25, 100), 60, "ops")
    assert next_move(plan, rollout, None, 100, T0).percent == 5
    waiting = next_move(plan, rollout, None, 2, T0)
    assert waiting.move is Move.WAIT and "coverage allows 2%" in waiting.note


def test_a_step_lasts_its_time_then_advances_only_when_healthy() -> None:
    plan, rollout = started()
    early = next_move(plan, rollout, Outcome.HEALTHY, 100, T0 + timedelta(seconds=30))
    assert early.move is Move.WAIT and "30 s to go" in early.note
    later = T0 + timedelta(seconds=61)
    assert next_move(plan, rollout, Outcome.HEALTHY, 100, later).percent == 25
    thin = next_move(plan, rollout, Outcome.NO_VERDICT, 100, later,
                     why="too thin a baseline: 3 searches of the baseline version")
    assert thin.move is Move.WAIT and thin.note == (
        "holding step 1/3 at 5%: too thin a baseline: 3 searches of the baseline version")
    assert next_move(plan, rollout, None, 100, later).move is Move.WAIT
    assert next_move(plan, rollout, Outcome.BREACH, 100, later).move is Move.WAIT


def test_a_healthy_last_step_of_100_promotes_unless_the_plan_says_not_to() -> None:
    plan, rollout = started(percent=100, index=2)
    later = T0 + timedelta(seconds=61)
    assert next_move(plan, rollout, Outcome.HEALTHY, 100, later).move is Move.PROMOTE
    assert next_move(plan, rollout, Outcome.NO_VERDICT, 100, later).move is Move.WAIT
    kept, rollout = started(percent=100, index=2, promote=False)
    assert next_move(kept, rollout, Outcome.HEALTHY, 100, later).move is Move.FINISH
    short = replace(new_plan(make_rollout(percent=0), (5, 50), 60, "ops"), index=1,
                    step_started=T0.isoformat(), step_revision=2)
    at_half = replace(make_rollout(percent=50), revision=2)
    assert next_move(short, at_half, Outcome.HEALTHY, 100, later).move is Move.FINISH


def test_a_plan_starts_from_the_current_share_and_never_lowers_it() -> None:
    """At 100% a ramp of 5,25,50,100 once dropped 95% of users back to v1."""
    plan = new_plan(make_rollout(percent=25), (5, 25, 50, 100), 60, "ops")
    assert plan.steps == (50, 100) and plan.note == "starts from the rule's 25%; skipped 5%, 25%"
    assert next_move(plan, make_rollout(percent=25), None, 100, T0).percent == 50
    with pytest.raises(RuleError, match=r"at 100% already and a ramp never lowers the share"):
        new_plan(make_rollout(percent=100), (5, 25, 50, 100), 60, "ops")
    again = new_plan(make_rollout(percent=40, state="rolled_back"), (5, 100), 60, "ops")
    assert again.steps == (5, 100)  # a rolled-back rule serves nobody the candidate


def test_a_rollback_a_new_candidate_or_a_hand_set_percent_stop_the_plan() -> None:
    plan, rollout = started()
    later = T0 + timedelta(seconds=61)
    rolled = replace(rollout, state=State.ROLLED_BACK, percent=0, updated_by="guard",
                     reason="guard: error ratio 30%")
    assert next_move(plan, rolled, None, 100, later).note == \
        "rolled back by guard: guard: error ratio 30%"
    by_hand = replace(rollout, percent=50, revision=3, updated_by="alice")
    assert "alice set 50% by hand" in next_move(plan, by_hand, None, 100, later).note
    paused = replace(rollout, state=State.PAUSED, revision=3)
    assert next_move(plan, paused, Outcome.HEALTHY, 100, later).move is Move.WAIT
    resumed = replace(rollout, revision=4)  # paused and resumed: same percent, goes on
    assert next_move(plan, resumed, Outcome.HEALTHY, 100, later).move is Move.ADVANCE


@pytest.mark.parametrize(("steps", "every"), [((), 60), ((5, 5), 60), ((0, 10), 60),
                                               ((5, 101), 60), ((5.001,), 60), ((5,), 0),
                                               ((5,), 1e308)])
def test_a_bad_plan_is_refused_naming_the_field(steps: tuple[float, ...], every: float) -> None:
    with pytest.raises(RuleError) as caught:
        new_plan(make_rollout(), steps, every, "ops")
    assert caught.value.field in ("steps", "every")


def test_an_operator_pauses_resumes_and_aborts_a_plan() -> None:
    plan, _ = started()
    paused = controlled(plan, RampAction.PAUSE)
    assert paused.state is RampState.PAUSED and paused.note == "paused by an operator"
    assert controlled(paused, RampAction.PAUSE) is paused  # nothing to do: nothing written
    assert controlled(paused, RampAction.RESUME).state is RampState.RUNNING
    assert controlled(plan, RampAction.ABORT).state is RampState.STOPPED
    done = replace(plan, state=RampState.DONE)
    assert controlled(done, RampAction.ABORT) is done
    with pytest.raises(TransitionError, match="the ramp is done; cannot resume it"):
        controlled(done, RampAction.RESUME)
    with pytest.raises(TransitionError, match="the ramp is stopped; cannot pause it"):
        controlled(replace(plan, state=RampState.STOPPED), RampAction.PAUSE)


def test_an_action_is_one_of_three() -> None:
    assert ramp_action("resume") is RampAction.RESUME
    with pytest.raises(RuleError, match="'sideways': pause, resume or abort"):
        ramp_action("sideways")
