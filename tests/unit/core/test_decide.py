"""decide() routes every request to a declared version with a reason, sticky and monotone."""

from __future__ import annotations

from collections import Counter
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from rollout_rules.bucket import bucket
from rollout_rules.decide import Context, Reason, decide
from tests.unit.core.rollouts import rollout

FULL = 1.0
users = st.text(min_size=1, max_size=30)
percents = st.integers(min_value=0, max_value=10_000).map(lambda bp: bp / 100)


def test_a_user_in_the_bucket_range_gets_the_candidate() -> None:
    r = rollout(percent=50)
    inside = next(f"u{i}" for i in range(1000) if bucket("products", f"u{i}") <= 5000)
    outside = next(f"u{i}" for i in range(1000) if bucket("products", f"u{i}") > 5000)
    d_in = decide(r, Context(user_id=inside), FULL)
    d_out = decide(r, Context(user_id=outside), FULL)
    assert (d_in.version, d_in.reason, d_in.effective_percent) == ("v2", Reason.BUCKET_IN, 50.0)
    assert (d_out.version, d_out.reason) == ("v1", Reason.BUCKET_OUT)
    assert d_in.bucket == bucket("products", inside) and d_in.revision == r.revision


def test_the_salt_reshuffles_users() -> None:
    plain, salted = rollout(percent=50), rollout(percent=50, salt="attempt-2")
    ids = [f"u{i}" for i in range(2000)]
    moved = sum(decide(plain, Context(user_id=u), FULL).version
                != decide(salted, Context(user_id=u), FULL).version for u in ids)
    assert 800 < moved < 1200  # about half change sides: an independent shuffle


def test_coverage_caps_the_share_and_says_so() -> None:
    r = rollout(percent=40, coverage_gate={"steps": [
        {"min_coverage": 0.0, "max_percent": 5}, {"min_coverage": 0.5, "max_percent": 25}]})
    reasons = Counter(decide(r, Context(user_id=f"u{i}"), 0.3).reason for i in range(20_000))
    # 30% covered allows 5%: of the 40% the operator asked for, 35% are capped back to stable.
    assert abs(reasons[Reason.BUCKET_IN] / 20_000 - 0.05) < 0.01
    assert abs(reasons[Reason.COVERAGE_CAPPED] / 20_000 - 0.35) < 0.015
    assert decide(r, Context(user_id="x"), None).effective_percent == 0.0


def test_precedence_of_overrides_and_states() -> None:
    r = rollout(percent=100, overrides={"users": {"qa": "v2", "vip": "v1"},
                                        "tenants": {"acme": "v2"}})
    assert decide(r, Context(user_id="vip"), FULL).reason is Reason.USER_OVERRIDE
    assert decide(r, Context(user_id="vip"), FULL).version == "v1"
    assert decide(r, Context(user_id="z", tenant="acme"), FULL).reason is Reason.TENANT_OVERRIDE
    open_r = rollout(overrides={"users": {"vip": "v1"}, "allow_request": True})
    assert decide(open_r, Context(user_id="vip"), FULL, "v2").reason is Reason.OVERRIDE
    assert decide(r, Context(user_id="qa", tenant="x"), FULL, "v1").reason is not Reason.OVERRIDE


def test_pause_and_rollback_outrank_every_override() -> None:
    for state in ("paused", "rolled_back"):
        r = rollout(percent=100 if state == "paused" else 0, state=state,
                    overrides={"users": {"qa": "v2"}, "allow_request": True})
        for asked in (None, "v2"):
            d = decide(r, Context(user_id="qa"), FULL, asked)
            assert (d.version, d.reason) == ("v1", Reason(state)), (state, asked)


def test_request_overrides_must_be_allowed_and_declared() -> None:
    closed = rollout()  # request overrides are off unless the rule allows them
    assert decide(closed, Context(user_id="a"), FULL, "v2").reason is not Reason.OVERRIDE
    allowed = rollout(overrides={"allow_request": True})
    assert decide(allowed, Context(user_id="a"), FULL, "v2").reason is Reason.OVERRIDE
    assert decide(allowed, Context(user_id="a"), FULL, "v9").reason is not Reason.OVERRIDE


def test_no_candidate_and_missing_keys_go_to_stable() -> None:
    assert decide(rollout(candidate=None, percent=0), Context(), FULL).reason is Reason.NO_CANDIDATE
    by_user = rollout(percent=100, stickiness="user_id")
    d = decide(by_user, Context(session_id="s", random_key="r"), FULL)
    assert (d.version, d.reason) == ("v1", Reason.MISSING_KEY)


def test_default_stickiness_falls_back_from_user_to_session_to_random() -> None:
    r = rollout(percent=50)
    contexts = [Context(user_id="a", session_id="b"), Context(session_id="b", random_key="c"),
                Context(random_key="c")]
    buckets = [decide(r, context, FULL).bucket for context in contexts]
    assert buckets == [bucket("products", key) for key in ("a", "b", "c")]


@given(users, percents, percents)
def test_ramping_up_never_moves_a_user_back(user: str, low: float, high: float) -> None:
    low, high = min(low, high), max(low, high)
    before = decide(rollout(percent=low), Context(user_id=user), FULL)
    after = decide(rollout(percent=high), Context(user_id=user), FULL)
    if before.version == "v2":
        assert after.version == "v2"


extras = st.fixed_dictionaries({
    "session_id": st.text(max_size=10), "random_key": st.text(max_size=10),
    "tenant": st.just("no-override"),
    "properties": st.dictionaries(st.text(max_size=5), st.text(max_size=5))})


@given(users, percents, st.floats(min_value=0, max_value=1), extras)
def test_a_user_s_version_depends_on_the_user_alone(user: str, percent: float, coverage: float,
                                                    extra: dict[str, Any]) -> None:
    """Sticky: whatever else a request carries (session, random draw, properties, a tenant
    without an override), a user with an id is routed by that id's bucket."""
    r = rollout(percent=percent)
    plain = decide(r, Context(user_id=user), coverage)
    busy = decide(r, Context(user_id=user, **extra), coverage)
    assert (busy.version, busy.bucket) == (plain.version, plain.bucket)
    assert plain.bucket == bucket("products", user)


@given(users, st.sampled_from(["ramping", "paused", "rolled_back"]), percents,
       st.one_of(st.none(), st.floats(min_value=0, max_value=1)),
       st.tuples(st.one_of(st.none(), st.sampled_from(["v1", "v2"]), users), st.booleans()))
def test_decide_always_names_a_declared_version(user: str, state: str, percent: float,
                                                coverage: float | None,
                                                asked: tuple[str | None, bool]) -> None:
    override, allow = asked
    r = rollout(state=state, percent=percent, overrides={"allow_request": allow})
    d = decide(r, Context(user_id=user), coverage, override)
    assert r.has_version(d.version)
    honoured = override in ("v1", "v2") and allow and state == "ramping"
    assert (d.reason is Reason.OVERRIDE) == honoured
    refused = override is not None and not honoured and state == "ramping"
    assert (d.reason is Reason.OVERRIDE_REFUSED) == refused  # the edge answers it 400
    if honoured:
        assert d.version == override
    assert 0 <= d.effective_percent <= percent


def test_shares_hold_at_0_10_50_100_percent() -> None:
    for percent in (0, 10, 50, 100):
        r = rollout(percent=percent)
        share = sum(decide(r, Context(user_id=f"u{i}"), FULL).version == "v2"
                    for i in range(20_000)) / 20_000
        assert abs(share - percent / 100) < 0.012, (percent, share)
