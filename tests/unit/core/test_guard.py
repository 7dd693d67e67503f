"""The guard's verdict: breaches beyond doubt, no verdict on thin traffic, no false alarms A/A."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
from msgspec.structs import replace

from rollout_rules.guard import (
    LATENCY_BOUNDS_MS,
    Cohorts,
    Outcome,
    Window,
    bucket_of,
    cohorts,
    judge,
    shadow_of,
    shadow_target,
    total,
    verdict,
    watched,
)
from rollout_rules.model import GuardPolicy, State
from tests.unit.core.rollouts import rollout as make_rollout

POLICY = GuardPolicy()


def window(n: int, errors: int = 0, slow: int = 0, fallbacks: int = 0) -> Window:
    latency = [0] * len(LATENCY_BOUNDS_MS)
    latency[bucket_of(1.0)] = n - slow
    latency[bucket_of(400.0)] = slow
    return Window(requests=n, errors=errors, fallbacks=fallbacks, searches=n, slow=slow,
                  latency=tuple(latency))


def test_a_candidate_that_fails_is_a_breach_naming_its_figures() -> None:
    found = verdict(window(100, errors=30, fallbacks=30), window(100, errors=1), POLICY)
    assert found.outcome is Outcome.BREACH
    assert "error ratio 30.00% (30/100)" in found.reason
    assert found.figures["test_error_ratio"] == pytest.approx(0.3)


def test_a_slow_candidate_is_a_breach_on_its_store_p99() -> None:
    found = verdict(window(100, slow=20), window(100), POLICY)
    assert found.outcome is Outcome.BREACH
    assert found.reason.startswith("search p99 <= 512 ms, over 250 ms (baseline <= 1 ms)")


def test_fallbacks_alone_are_judged_against_the_bound() -> None:
    """A version that is unavailable falls back without an error: still a breach."""
    found = verdict(window(200, fallbacks=60), window(200), POLICY)
    assert found.outcome is Outcome.BREACH and "fallback ratio 30.00%" in found.reason


def test_thin_traffic_gives_no_verdict_however_bad_it_looks() -> None:
    found = verdict(window(20, errors=20), window(500), POLICY)
    assert found.outcome is Outcome.NO_VERDICT
    assert "20 searches of the version under test in the window, at least 50" in found.reason


def test_a_small_difference_past_the_bound_is_not_yet_proof() -> None:
    """6% against 5% on 100 searches each: past the bound, but chance explains it."""
    assert verdict(window(100, errors=6), window(100, errors=5), POLICY).outcome is \
        Outcome.HEALTHY


def test_worse_than_baseline_but_within_bounds_is_healthy() -> None:
    assert verdict(window(10_000, errors=400), window(10_000, errors=100), POLICY).outcome is \
        Outcome.HEALTHY


def test_shadow_overlap_collapse_is_a_breach_when_the_policy_asks() -> None:
    policy = replace(POLICY, min_overlap=0.3)
    collapsed = Window(requests=100, searches=100, overlap_n=100, overlap_sum=5.0,
                       overlap_sq=0.5)
    assert verdict(collapsed, window(100), policy).reason.startswith(
        "shadow overlap@10 0.05 over 100 queries, below 0.30")
    assert verdict(collapsed, window(100), POLICY).outcome is Outcome.HEALTHY


def test_windows_add_up_bucket_by_bucket() -> None:
    merged = total([window(10, errors=1, slow=2), window(30, errors=2)])
    assert (merged.requests, merged.errors, merged.slow) == (40, 3, 2)
    assert sum(merged.latency) == 40 and merged.p99_ms == 512


def _aa_run(seed: int, policy: GuardPolicy, seconds: int = 600, rate: int = 100) -> int | None:
    """A/A: both cohorts draw from one distribution (errors and slow searches exactly at the
    policy's bounds, the hardest case), judged every simulated second over a sliding window;
    the second of the first false alarm, if any."""
    rng = np.random.default_rng(seed)
    n = rng.poisson(rate, seconds)
    t_n = rng.binomial(n, 0.5)
    b_n = n - t_n
    cohort = {}
    for name, size in (("t", t_n), ("b", b_n)):
        errors = rng.binomial(size, policy.max_error_rate)
        cohort[name] = [np.concatenate([[0], np.cumsum(a)]) for a in (
            size, errors, rng.binomial(size, 0.01))]
    span = int(policy.window_s)
    for second in range(seconds):
        low, high = max(0, second + 1 - span), second + 1
        t = [int(c[high] - c[low]) for c in cohort["t"]]
        b = [int(c[high] - c[low]) for c in cohort["b"]]
        found = verdict(Window(requests=t[0], errors=t[1], fallbacks=t[1], searches=t[0],
                               slow=t[2]),
                        Window(requests=b[0], errors=b[1], searches=b[0], slow=b[2]), policy)
        if found.breach:
            return second
    return None


def test_identical_versions_raise_no_false_alarm_in_99_of_100_runs() -> None:
    """Ten simulated minutes at 100 queries/s, a verdict every second, 100 seeds."""
    alarms = {seed: at for seed in range(100) if (at := _aa_run(seed, POLICY)) is not None}
    print(f"\nA/A: false alarms in {len(alarms)} of 100 runs of 600 ticks: {alarms}")
    assert len(alarms) <= 1


def test_a_real_difference_is_found_within_seconds() -> None:
    """The same simulation with the test cohort failing 30% of the time from second 0."""
    rng = np.random.default_rng(7)
    t, b, found_at = Window(), Window(), None
    for second in range(1, 30):
        k = int(rng.binomial(100, 0.5))
        errors = int(rng.binomial(k, 0.3))
        t = t + Window(requests=k, errors=errors, fallbacks=errors, searches=k)
        b = b + Window(requests=100 - k, searches=100 - k)
        if verdict(t, b, POLICY).breach:
            found_at = second
            break
    print(f"\nfound at second {found_at} with {t.requests} test searches")
    assert found_at is not None and found_at <= 3


def test_the_guard_judges_the_candidate_while_it_ramps_and_the_promote_while_watched() -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    ramping = make_rollout(percent=10)
    assert cohorts(ramping, now) == Cohorts("v2", "v1", False)
    assert cohorts(replace(ramping, percent=0), now) is None
    assert cohorts(replace(ramping, state=State.PAUSED), now) is None
    promoted = replace(ramping, stable="v2", candidate=None, previous_stable="v1", percent=0,
                       state=State.PROMOTED, updated_at="2026-01-01T00:00:00.000Z")
    assert cohorts(promoted, now + timedelta(minutes=29)) == Cohorts("v2", "v1", True)
    assert cohorts(promoted, now + timedelta(minutes=31)) is None
    assert cohorts(replace(ramping, guard=replace(POLICY, enabled=False)), now) is None


def test_shadow_traffic_goes_to_the_version_watched_only_when_asked() -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    ramping = make_rollout(percent=0)
    shadowed = replace(ramping, guard=replace(POLICY, shadow_share=0.1))
    assert shadow_target(ramping, now) is None
    assert shadow_target(shadowed, now) == "v2"
    assert shadow_target(replace(shadowed, state=State.ROLLED_BACK), now) is None


def test_the_candidates_own_queries_give_stable_a_baseline_at_every_step() -> None:
    """At 100% no user is left on stable: a share of the candidate's queries is searched in
    stable too, so the guard can still judge (and roll back) the last step."""
    now = datetime(2026, 1, 1, tzinfo=UTC)
    full = make_rollout(percent=100)
    assert shadow_of(full, "v2", now) == ("v1", 0.1)
    assert shadow_of(full, "v1", now) is None  # stable's queries: only with shadow_share
    assert shadow_of(replace(full, guard=replace(POLICY, shadow_share=0.5)), "v1", now) == \
        ("v2", 0.5)
    assert shadow_of(replace(full, state=State.PAUSED), "v2", now) is None
    assert shadow_of(replace(full, guard=replace(POLICY, baseline_share=0.0)), "v2", now) is None


def test_no_verdict_says_which_side_is_thin() -> None:
    policy = replace(POLICY, min_requests=50)
    thin_baseline = verdict(Window(requests=900), Window(requests=3), policy)
    assert thin_baseline.outcome is Outcome.NO_VERDICT
    assert thin_baseline.reason.startswith("too thin a baseline: 3 searches")
    thin_test = verdict(Window(requests=3), Window(requests=900), policy)
    assert thin_test.reason.startswith("too little traffic to judge: 3 searches")


def test_a_dark_launch_is_watched_but_never_judged() -> None:
    """A candidate at 0% with shadow traffic: its figures are shown against stable, and however
    they look there is no verdict, since no user is on it."""
    now = datetime(2026, 1, 1, tzinfo=UTC)
    dark = make_rollout(percent=0, guard=replace(POLICY, shadow_share=0.5))
    pair = watched(dark, now)
    assert pair == Cohorts("v2", "v1", watching=False, dark=True)
    failing = {"v2": Window(requests=500, errors=400), "v1": Window(requests=500)}
    assert judge(Cohorts("v2", "v1", False), failing, dark.guard).outcome is Outcome.BREACH
    said = judge(pair, failing, dark.guard)
    assert said.outcome is Outcome.NO_VERDICT and "shadow traffic only" in said.reason
    assert said.figures  # the figures stay, to be shown
    assert watched(replace(dark, guard=replace(POLICY, shadow_share=0.0)), now) is None
    assert watched(make_rollout(percent=10), now) == Cohorts("v2", "v1", False)


def test_a_watched_promote_has_a_baseline_by_default() -> None:
    """After a promote a share of the new stable's queries is searched in the previous one for
    the watch: the guard judges the watch with no setting changed (once it said "too thin a
    baseline: 0 searches" unless shadow_share was set)."""
    now = datetime(2026, 1, 1, tzinfo=UTC)
    promoted = replace(make_rollout(percent=0), stable="v2", candidate=None,
                       previous_stable="v1", state=State.PROMOTED,
                       updated_at="2026-01-01T00:00:00.000Z")
    assert shadow_of(promoted, "v2", now + timedelta(minutes=29)) == ("v1", 0.1)
    assert shadow_of(promoted, "v2", now + timedelta(minutes=31)) is None  # the watch is over
    assert shadow_of(replace(promoted, guard=replace(POLICY, shadow_share=0.5)), "v2", now) == \
        ("v1", 0.5)
    assert shadow_of(replace(promoted, guard=replace(POLICY, enabled=False)), "v2", now) is None
    assert shadow_of(replace(promoted, guard=replace(POLICY, baseline_share=0.0)), "v2",
                     now) is None
