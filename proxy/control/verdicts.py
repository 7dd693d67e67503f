"""What the guard keeps in the rule store: each instance's counts and the last verdict."""

from __future__ import annotations

import time

import msgspec

from proxy.state.base import Guarding
from rollout_rules.guard import Outcome, Window, total
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


async def merged_windows(store: Guarding, rollout: Rollout, fresh_s: float
                         ) -> tuple[dict[str, Window], int]:
    """Every instance's counts of the rule's revision published within ``fresh_s``, summed
    per version; and how many instances they came from (older counts are an instance gone)."""
    records = await store.guard_records(rollout.alias)
    fresh_after = time.time() - fresh_s
    per_version: dict[str, list[Window]] = {}
    instances = 0
    for field, raw in records.items():
        if not field.startswith(INSTANCE_PREFIX):
            continue
        try:
            counts = msgspec.json.decode(raw, type=InstanceCounts)
        except msgspec.DecodeError:
            continue  # written by a proxy of another release: not ours to read
        if counts.revision != rollout.revision or counts.at < fresh_after:
            continue
        instances += 1
        for version, window in counts.windows.items():
            per_version.setdefault(version, []).append(window)
    return {version: total(found) for version, found in per_version.items()}, instances
