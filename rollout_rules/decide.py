"""``decide``: which version serves this request, and why. Pure, total, fast.

Precedence, first match wins:

1. no candidate, rolled back, paused: everyone on stable, whatever the request asks (a rollback's
   audit entry means nobody is served by the candidate);
2. a request override (header or field), if the rollout allows it and the version is declared;
   otherwise the request is refused (``override_refused``, on stable: the edge answers 400);
3. a user override, then a tenant override;
4. no stickiness key: stable;
5. the user's bucket against the operator's percent capped by coverage: in, capped or out.

The decision never raises: whatever the input, it names a declared version and a reason.
"""

from __future__ import annotations

from enum import StrEnum

import msgspec

from rollout_rules.bucket import bucket
from rollout_rules.coverage import effective_bp
from rollout_rules.model import Rollout, State


class Reason(StrEnum):
    OVERRIDE = "override"
    OVERRIDE_REFUSED = "override_refused"  # a request asked for a version it may not have
    USER_OVERRIDE = "user_override"
    TENANT_OVERRIDE = "tenant_override"
    BUCKET_IN = "bucket_in"
    BUCKET_OUT = "bucket_out"
    COVERAGE_CAPPED = "coverage_capped"
    ROLLED_BACK = "rolled_back"
    PAUSED = "paused"
    NO_CANDIDATE = "no_candidate"
    MISSING_KEY = "missing_key"
    FALLBACK = "fallback"
    VECTOR = "vector"  # a raw vector from the caller: searched in the space it was made in
    INTERLEAVED = "interleaved"  # one list from both versions (``rollout_rules.online``)


class Context(msgspec.Struct, frozen=True, kw_only=True):
    """What a request tells us about its caller. ``random_key`` is drawn per request by the edge."""

    user_id: str | None = None
    session_id: str | None = None
    tenant: str | None = None
    properties: dict[str, str] = msgspec.field(default_factory=dict)
    random_key: str = ""


class Decision(msgspec.Struct, frozen=True):
    version: str
    reason: Reason
    bucket: int | None
    revision: int
    effective_percent: float


_STATE_REASONS = {State.ROLLED_BACK: Reason.ROLLED_BACK, State.PAUSED: Reason.PAUSED}


def decide(  # noqa: PLR0911 - a decision table reads best as one return per rule
    rollout: Rollout, context: Context, coverage: float | None, override: str | None = None
) -> Decision:
    """Route one request."""
    stable, candidate, revision = rollout.stable, rollout.candidate, rollout.revision
    state_reason = _STATE_REASONS.get(rollout.state) if candidate is not None else None
    percent_bp = rollout.percent_bp
    allowed_bp = 0
    if candidate is not None and state_reason is None:
        allowed_bp = effective_bp(percent_bp, rollout.coverage_gate, coverage)
    share = allowed_bp / 100
    if candidate is None:
        return Decision(stable, Reason.NO_CANDIDATE, None, revision, share)
    if state_reason is not None:
        return Decision(stable, state_reason, None, revision, share)
    if override is not None:
        if not override_allowed(rollout, override):
            return Decision(stable, Reason.OVERRIDE_REFUSED, None, revision, share)
        return Decision(override, Reason.OVERRIDE, None, revision, share)
    pinned = _pinned(rollout, context)
    if pinned is not None:
        return Decision(pinned[0], pinned[1], None, revision, share)
    key = stickiness_value(rollout.stickiness, context)
    if key is None:
        return Decision(stable, Reason.MISSING_KEY, None, revision, share)
    user_bucket = bucket(rollout.group, key)
    if user_bucket <= allowed_bp:
        return Decision(candidate, Reason.BUCKET_IN, user_bucket, revision, share)
    reason = Reason.COVERAGE_CAPPED if user_bucket <= percent_bp else Reason.BUCKET_OUT
    return Decision(stable, reason, user_bucket, revision, share)


def override_allowed(rollout: Rollout, version: str) -> bool:
    return rollout.overrides.allow_request and rollout.has_version(version)


def stickiness_value(stickiness: str, context: Context) -> str | None:
    """The key a user is bucketed by: Unleash's ``default`` is user, then session, then random."""
    if stickiness == "default":
        return context.user_id or context.session_id or context.random_key or None
    if stickiness == "user_id":
        return context.user_id or None
    if stickiness == "session_id":
        return context.session_id or None
    if stickiness == "random":
        return context.random_key or None
    return context.properties.get(stickiness) or None


def _pinned(rollout: Rollout, context: Context) -> tuple[str, Reason] | None:
    overrides = rollout.overrides
    if context.user_id is not None and context.user_id in overrides.users:
        return overrides.users[context.user_id], Reason.USER_OVERRIDE
    if context.tenant is not None and context.tenant in overrides.tenants:
        return overrides.tenants[context.tenant], Reason.TENANT_OVERRIDE
    return None
