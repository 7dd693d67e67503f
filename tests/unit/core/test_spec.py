"""Re-applying a rules file merges its spec three ways and never reverts what operations did."""

from __future__ import annotations

import pytest
from msgspec.structs import replace

from rollout_rules import ops
from rollout_rules.errors import RuleError
from rollout_rules.model import Rollout, State
from rollout_rules.spec import apply_file, differences, first_declaration
from tests.unit.core.rollouts import document, rollout


def declared_alone() -> Rollout:
    """v1 declared alone from a file, as the README's walkthrough starts."""
    return first_declaration(rollout(candidate=None, percent=0,
                                     versions=document()["versions"][:1]))


def test_an_unchanged_file_after_a_promote_changes_nothing() -> None:
    file = rollout(percent=0)
    live = ops.promote(ops.set_percent(first_declaration(file), 100), 1.0, at="2026-01-01")
    applied = apply_file(live, file)
    assert applied.rollout == live
    assert applied.kept == [
        "stable: the file says v1, the rule's stable is v2 (changed by operations, last by "
        "someone): kept; write stable = 'v2' in the file, or apply it with --take-status to "
        "make v1 stable again"]
    reverted = apply_file(live, file, take_status=True).rollout
    assert (reverted.stable, reverted.candidate, reverted.state) == ("v1", "v2", State.RAMPING)


def test_an_unchanged_file_keeps_a_rollback_a_ramp_and_a_guard_edited_by_hand() -> None:
    file = rollout(percent=0)
    live = ops.set_guard(ops.set_percent(first_declaration(file), 40), {"min_requests": 20})
    assert apply_file(live, file).rollout == live
    assert apply_file(live, file).kept == [
        "percent: the file says 0%, the rule is at 40% (ramping): kept (`embedshift set` "
        "changes it)"]
    rolled_back = ops.rollback(live)
    assert apply_file(rolled_back, file).rollout == rolled_back


def test_what_the_file_changed_since_it_was_applied_is_taken_and_shown() -> None:
    file = rollout(percent=0)
    live = ops.set_guard(ops.set_percent(first_declaration(file), 40), {"min_requests": 20})
    edited = replace(file, guard=replace(file.guard, max_p99_ms=100.0), salt="reshuffle")
    after = apply_file(live, edited).rollout
    assert (after.guard.max_p99_ms, after.guard.min_requests, after.salt) == \
        (100.0, 20, "reshuffle")
    assert after.percent == 40
    assert differences(live, after) == ["salt:  -> reshuffle", "guard.max_p99_ms: 250 -> 100"]


def test_a_file_adding_the_candidate_moves_the_rule_on() -> None:
    live = declared_alone()
    after = apply_file(live, rollout(percent=0)).rollout
    assert (after.candidate, after.percent, after.state) == ("v2", 0, State.RAMPING)
    assert differences(live, after)[0].startswith("versions.v2: added")
    assert "candidate: - -> v2" in differences(live, after)


def test_a_file_naming_another_stable_is_refused_unless_its_status_is_taken() -> None:
    file = rollout(percent=0)
    live = first_declaration(file)
    other = rollout(stable="v2", candidate="v1", percent=0)
    with pytest.raises(RuleError, match="never changes the stable version"):
        apply_file(live, other)
    assert apply_file(live, other, take_status=True).rollout.stable == "v2"


def test_an_exported_spec_leaves_out_defaults_and_status_and_applies_as_a_no_op() -> None:
    """`export` writes what a file in git needs; the rule it came from reads it as unchanged,
    after a ramp, a hand-edited guard and a promote alike."""
    from rollout_rules.model import parse_rollout
    from rollout_rules.spec import spec_document

    ramped = ops.set_guard(ops.set_percent(first_declaration(rollout(percent=0)), 40),
                           {"min_requests": 20})
    promoted = ops.promote(ops.set_percent(ramped, 100), 1.0, at="2026-01-01")
    for live in (ramped, promoted):
        spec = spec_document(live)
        assert set(spec) <= {"alias", "stable", "candidate", "versions", "guard", "salt",
                             "stickiness", "coverage_gate", "overrides", "promotion"}
        assert spec["guard"] == {"min_requests": 20}  # the one setting off its default
        assert {"name", "model", "dimensions", "target"} <= set(spec["versions"][0])
        applied = apply_file(live, parse_rollout(spec)).rollout
        assert differences(live, applied) == []  # only the record of what was applied moves
        assert replace(applied, applied=live.applied) == live
    assert "percent" not in spec_document(ramped) and "state" not in spec_document(ramped)
