"""Operator transitions are pure and refuse what does not apply, saying why."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from msgspec.structs import replace

from rollout_rules import ops
from rollout_rules.errors import RuleError, TransitionError
from rollout_rules.guard import watching
from rollout_rules.model import State
from tests.unit.core.rollouts import rollout


def test_set_percent_ramps_and_restarts_a_rolled_back_candidate() -> None:
    assert ops.set_percent(rollout(), 25.5).percent == 25.5
    restarted = ops.set_percent(rollout(state="rolled_back", percent=0), 1)
    assert (restarted.state, restarted.percent) == (State.RAMPING, 1)


@pytest.mark.parametrize("bad", [-1, 100.5, 3.333])
def test_set_percent_refuses_bad_values(bad: float) -> None:
    with pytest.raises(RuleError) as caught:
        ops.set_percent(rollout(), bad)
    assert caught.value.field == "percent"


def test_pause_keeps_the_percent_and_resume_restores_it() -> None:
    paused = ops.pause(rollout(percent=30))
    assert (paused.state, paused.percent) == (State.PAUSED, 30)
    with pytest.raises(TransitionError, match="paused"):
        ops.set_percent(paused, 40)
    assert ops.resume(paused) == rollout(percent=30)
    assert ops.pause(paused) is paused


def test_rollback_zeroes_the_candidate_and_is_idempotent() -> None:
    rolled = ops.rollback(rollout(percent=30))
    assert (rolled.state, rolled.percent, rolled.candidate) == (State.ROLLED_BACK, 0, "v2")
    assert ops.rollback(rolled) is rolled
    with pytest.raises(TransitionError):
        ops.resume(rolled)


def test_promote_needs_coverage_unless_forced() -> None:
    with pytest.raises(TransitionError, match=r"coverage is 50.0%, promotion needs 99.0%"):
        ops.promote(rollout(percent=100), 0.5)
    promoted = ops.promote(rollout(percent=100), 0.99)
    assert (promoted.stable, promoted.candidate, promoted.previous_stable) == ("v2", None, "v1")
    assert ops.promote(rollout(percent=100), None, force=True).stable == "v2"


def test_promote_refuses_an_unverified_candidate_unless_forced() -> None:
    with pytest.raises(TransitionError, match="cannot be promoted: it was never verified"):
        ops.promote(rollout(percent=100), 1.0, unverified="it was never verified")
    forced = ops.promote(rollout(percent=100), 1.0, force=True, unverified="never verified")
    assert forced.stable == "v2"


PROMOTED_AT = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
AFTER_WATCH = PROMOTED_AT + timedelta(seconds=1801)


def test_retire_lets_go_of_the_previous_stable_and_then_nothing_rolls_back() -> None:
    promoted = ops.promote(rollout(percent=100), 1.0, at=PROMOTED_AT.isoformat())
    retired = ops.retire(promoted, AFTER_WATCH)
    assert (retired.stable, retired.previous_stable) == ("v2", None)
    with pytest.raises(TransitionError, match="no previous stable"):
        ops.retire(retired, AFTER_WATCH)
    with pytest.raises(TransitionError, match="nothing to roll back"):
        ops.rollback(retired)


def test_rollback_after_promotion_restores_the_previous_stable() -> None:
    restored = ops.rollback(ops.promote(rollout(percent=100), 1.0))
    assert (restored.stable, restored.candidate, restored.state) == ("v1", "v2", State.ROLLED_BACK)


def test_actions_without_a_candidate_say_so() -> None:
    bare = rollout(candidate=None, percent=0)
    for action in (ops.pause, ops.resume, ops.rollback):
        with pytest.raises(TransitionError):
            action(bare)
    with pytest.raises(TransitionError, match="no candidate"):
        ops.set_percent(bare, 5)
    with pytest.raises(TransitionError, match="rolled back"):
        ops.promote(rollout(state="rolled_back", percent=0), 1.0)


def test_summaries_name_what_changed() -> None:
    before = rollout(percent=5)
    assert ops.summarize_change(before, ops.set_percent(before, 10)) == "percent 5 -> 10"
    assert ops.summarize_change(None, before).startswith("declared: stable v1, candidate v2")


def test_guard_fields_change_from_text_and_a_bad_one_is_named() -> None:
    before = rollout()
    after = ops.set_guard(before, {"shadow_share": "0.1", "min_requests": "30"})
    assert (after.guard.shadow_share, after.guard.min_requests) == (0.1, 30)
    assert ops.summarize_change(before, after) == \
        "guard.min_requests 50 -> 30, guard.shadow_share 0 -> 0.1"
    for bad, field in (({"shadow_share": "2"}, "guard.shadow_share"),
                       ({"shadw": "1"}, "guard.shadw"), ({"alpha": "x"}, "guard.alpha")):
        with pytest.raises(RuleError) as caught:
            ops.set_guard(before, bad)
        assert caught.value.field == field


def test_retire_inside_the_watch_is_refused_unless_forced() -> None:
    promoted = ops.promote(rollout(percent=100), 1.0, at=PROMOTED_AT.isoformat())
    with pytest.raises(TransitionError, match=r"watched for 1500 s more .*force"):
        ops.retire(promoted, PROMOTED_AT + timedelta(seconds=300))
    assert ops.retire(promoted, PROMOTED_AT + timedelta(seconds=300),
                      force=True).previous_stable is None


def test_the_watch_runs_from_the_promote_not_from_the_rules_last_edit() -> None:
    """A guard edit 75 s after a promote (watch 60 s) must not reopen the watch."""
    promoted = ops.promote(rollout(percent=100), 1.0, at=PROMOTED_AT.isoformat())
    edited = replace(ops.set_guard(promoted, {"watch_s": 60}),
                     updated_at=(PROMOTED_AT + timedelta(seconds=75)).isoformat())
    assert watching(edited, PROMOTED_AT + timedelta(seconds=59 + 20)) is False
    assert watching(edited, PROMOTED_AT + timedelta(seconds=59)) is True
