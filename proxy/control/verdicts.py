"""What the guard keeps in the rule store: each instance's counts and the last verdict."""

from __future__ import annotations

import msgspec

from proxy.state.base import Guarding
from rollout_rules.guard import Outcome, Window
from rollout_rules.model import Rollout
from rollout_rules.ramp import RampPlan

VERDICT_FIELD = "verdict"
INSTANCE_PREFIX = "instance:"


class InstanceCounts(msgspec.Struct, frozen=True, kw_only=True):
    """One instance's counts of one revision, as it published them."""

    revision: int
    at: float  # unix seconds
    windows: dict[str, Window]


class GuardStatus(msgspec.Struct, frozen=True, kw_only=True):
    """The last verdict on an alias, as ``status`` shows it."""

    revision: int
    at: str
    test: str
    baseline: str
    watching: bool
    outcome: Outcome
    reason: str
    figures: dict[str, float | None]
    instances: int


async def guard_status(store: Guarding, rollout: Rollout) -> GuardStatus | None:
    """The last verdict on the rule's current revision, if any instance judged it."""
    raw = (await store.guard_records(rollout.alias)).get(VERDICT_FIELD)
    if raw is None:
        return None
    try:
        status = msgspec.json.decode(raw, type=GuardStatus)
    except msgspec.DecodeError:
        return None
    return status if status.revision == rollout.revision else None


async def ramp_status(store: Guarding, rollout: Rollout) -> RampPlan | None:
    """The alias's guarded ramp plan, if one was ever made."""
    raw = await store.ramp(rollout.alias)
    return None if raw is None else read_plan(raw)


def read_plan(raw: bytes) -> RampPlan | None:
    try:
        return msgspec.json.decode(raw, type=RampPlan)
    except msgspec.DecodeError:
        return None  # written by another release: shown as none, replaced by the next plan
