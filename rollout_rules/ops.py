"""Operator actions as pure transitions: rollout in, rollout out, or a TransitionError saying why.

The store stamps revision, author, time and reason; these functions only decide what the rule
becomes. An action that changes nothing (rolling back what is already rolled back) returns the
rollout unchanged, so repeated alerts are harmless.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime

import msgspec
from msgspec.structs import replace

from rollout_rules.coverage import full_coverage
from rollout_rules.errors import RuleError, TransitionError
from rollout_rules.guard import watch_left_s
from rollout_rules.model import GuardPolicy, Rollout, State, check_rollout, rule_error


def set_percent(rollout: Rollout, percent: float) -> Rollout:
    """Ramp the candidate to ``percent``; restarts a rolled-back candidate."""
    _require_candidate(rollout, "ramp")
    if rollout.state is State.PAUSED:
        raise TransitionError(f"{rollout.alias}: rollout is paused; 'resume' it before ramping")
    return check_rollout(replace(rollout, percent=percent, state=State.RAMPING))


def pause(rollout: Rollout) -> Rollout:
    """Send everyone to stable but keep the percent, so 'resume' brings back the same users."""
    _require_candidate(rollout, "pause")
    if rollout.state is State.PAUSED:
        return rollout
    if rollout.state is not State.RAMPING:
        raise TransitionError(f"{rollout.alias}: only a ramping rollout can be paused "
                              f"(it is {rollout.state})")
    return replace(rollout, state=State.PAUSED)


def resume(rollout: Rollout) -> Rollout:
    _require_candidate(rollout, "resume")
    if rollout.state is State.RAMPING:
        return rollout
    if rollout.state is not State.PAUSED:
        raise TransitionError(f"{rollout.alias}: only a paused rollout can be resumed "
                              f"(it is {rollout.state}; use 'set' to ramp again)")
    return replace(rollout, state=State.RAMPING)


def rollback(rollout: Rollout) -> Rollout:
    """Candidate traffic to zero. After a promotion, restore the previous stable version."""
    if rollout.state is State.ROLLED_BACK:
        return rollout
    if rollout.candidate is None:
        if rollout.previous_stable is None:
            raise TransitionError(f"{rollout.alias}: nothing to roll back (no candidate, "
                                  "no previous stable version)")
        return replace(rollout, stable=rollout.previous_stable, candidate=rollout.stable,
                       previous_stable=None, percent=0.0, state=State.ROLLED_BACK)
    return replace(rollout, percent=0.0, state=State.ROLLED_BACK)


def promote(rollout: Rollout, coverage: float | None, force: bool = False,
            unverified: str | None = None, at: str = "") -> Rollout:
    """Make the candidate the stable version for everyone; the old stable is kept for rollback
    and watched from ``at`` (the promote's time). Refused below full coverage, or when
    ``unverified`` says why the candidate's documents were not shown to match stable's, unless
    forced."""
    candidate = _require_candidate(rollout, "promote")
    if rollout.state is State.ROLLED_BACK:
        raise TransitionError(f"{rollout.alias}: {candidate} was rolled back; ramp it again "
                              "before promoting")
    needed = full_coverage(rollout.coverage_gate)
    if rollout.coverage_gate.enabled and not force and (coverage or 0.0) < max(needed, 1e-9):
        raise TransitionError(
            f"{rollout.alias}: {candidate}'s backfill coverage is {_fraction(coverage)}, promotion "
            f"needs {_fraction(needed)} (finish the backfill, or force it)")
    if unverified is not None and not force:
        raise TransitionError(f"{rollout.alias}: {candidate} cannot be promoted: {unverified} "
                              f"(run `embedshift verify {rollout.alias}`, or force it with a "
                              "reason)")
    return replace(rollout, stable=candidate, candidate=None, previous_stable=rollout.stable,
                   percent=0.0, state=State.PROMOTED, promoted_at=at)


def set_guard(rollout: Rollout, changes: Mapping[str, object]) -> Rollout:
    """The rule with some guard policy fields changed (values as text or typed); RuleError
    naming ``guard.<field>`` for an unknown field or a bad value."""
    policy = {**msgspec.to_builtins(rollout.guard), **changes}
    try:
        guard = msgspec.convert(policy, type=GuardPolicy, strict=False)
    except msgspec.ValidationError as exc:
        error = rule_error(str(exc))
        raise RuleError(f"guard.{error.field}".removesuffix(".document"), error.message) \
            from exc
    return replace(rollout, guard=guard)


def retire(rollout: Rollout, now: datetime, force: bool = False) -> Rollout:
    """Let go of the previous stable version: no rollback to it any more, and it may be
    archived. Refused while the promote is still watched (the guard or an alert would restore
    it), unless forced."""
    if rollout.previous_stable is None:
        raise TransitionError(f"{rollout.alias}: no previous stable version to retire")
    left = watch_left_s(rollout, now)
    if left is not None and not force:
        raise TransitionError(
            f"{rollout.alias}: the promote of {rollout.stable} is watched for {left:.0f} s more "
            f"(guard.watch_s {rollout.guard.watch_s:g}): until then a breach or an alert "
            f"restores {rollout.previous_stable}; retire it after that, or force it with a "
            "reason")
    return replace(rollout, previous_stable=None)


def _require_candidate(rollout: Rollout, action: str) -> str:
    if rollout.candidate is None:
        raise TransitionError(f"{rollout.alias}: no candidate version to {action} "
                              f"(stable is {rollout.stable})")
    return rollout.candidate


def _fraction(value: float | None) -> str:
    return "unknown" if value is None else f"{value:.1%}"


def summarize_change(before: Rollout | None, after: Rollout) -> str:
    """One line saying what an audit entry changed, for humans: "percent 5 -> 10"."""
    if before is None:
        return (f"declared: stable {after.stable}, candidate {after.candidate or '-'}, "
                f"{after.percent:g}%")
    fields = ("stable", "candidate", "state", "percent", "salt", "stickiness", "previous_stable")
    parts = [f"{name} {_show(getattr(before, name))} -> {_show(getattr(after, name))}"
             for name in fields if getattr(before, name) != getattr(after, name)]
    old_guard, new_guard = msgspec.to_builtins(before.guard), msgspec.to_builtins(after.guard)
    parts += [f"guard.{name} {_show(old_guard.get(name))} -> {_show(value)}"
              for name, value in new_guard.items() if old_guard.get(name) != value]
    other = ("versions", "coverage_gate", "overrides")
    parts += [f"{name} changed" for name in other if getattr(before, name) != getattr(after, name)]
    return ", ".join(parts) or "no rule change"


def _show(value: object) -> str:
    if value is None:
        return "-"
    return f"{value:g}" if isinstance(value, float) else str(value)
