"""Alertmanager's webhook: a firing alert that names an alias rolls that alias back, once.

The payload is Alertmanager's (``version`` "4"). Each firing alert whose labels carry the alias
label (``embedshift_alias`` unless configured) rolls that alias back to 0% candidate, or, within
``guard.watch_s`` of a promote, restores the previous stable. The reason is the alert's name and
its ``summary`` annotation, the actor ``alertmanager``. Resolved alerts never ramp again.

Alertmanager repeats a firing alert every ``repeat_interval`` and retries on failure, so every
alert (fingerprint + start) is acted on once: a replay is answered ``replay`` and changes
nothing, even if an operator ramped again in between. A rollback of an alias already rolled back
is no change and no audit entry. Aliases no rule declares are named in the answer and changed in
no way; the known aliases of the same notification are still rolled back (a safety signal must
not be lost to a neighbour's typo), and the answer is a 200 either way.
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Literal

import msgspec
import structlog

from proxy.state.base import RulesAndGuard
from rollout_rules import ops
from rollout_rules.errors import NotFoundError, RuleError, TransitionError
from rollout_rules.guard import watching
from rollout_rules.model import State

log = structlog.get_logger("embedshift.alerts")
ALERT_ACTOR = "alertmanager"
Text = Annotated[str, msgspec.Meta(max_length=10_000)]


class Alert(msgspec.Struct, frozen=True, kw_only=True):
    """One alert of Alertmanager's webhook payload (fields we do not read are ignored)."""

    status: Literal["firing", "resolved"]
    labels: dict[str, Text]
    annotations: dict[str, Text] = msgspec.field(default_factory=dict)
    startsAt: Text = ""
    fingerprint: Text = ""


class Notification(msgspec.Struct, frozen=True, kw_only=True):
    """Alertmanager's webhook payload, version 4."""

    version: Literal["4"]
    status: Literal["firing", "resolved"]
    alerts: Annotated[list[Alert], msgspec.Meta(max_length=1000)]
    receiver: Text = ""
    groupKey: Text = ""


class Outcome(StrEnum):
    ROLLED_BACK = "rolled_back"
    UNCHANGED = "unchanged"  # already rolled back: no change, no audit entry
    REPLAY = "replay"  # this alert was acted on before
    REFUSED = "refused"  # nothing this alert may do (said why)
    UNKNOWN_ALIAS = "unknown_alias"
    RESOLVED = "resolved"  # a resolved alert never ramps again
    NOT_OURS = "not_ours"  # no alias label: not an alert about a rollout


class Result(msgspec.Struct, frozen=True, kw_only=True):
    alert: str
    alias: str | None
    outcome: Outcome
    detail: str = ""
    revision: int | None = None


class Answer(msgspec.Struct, frozen=True, kw_only=True):
    results: list[Result]


class AlertHandler:
    def __init__(self, store: RulesAndGuard, alias_label: str = "embedshift_alias") -> None:
        self.store, self.alias_label = store, alias_label

    async def handle(self, notification: Notification) -> Answer:
        """Act on every alert of a notification. The answer is a success whatever each alert
        came to (each result says): Alertmanager counts any other answer as a failed
        notification, and an alias no rule declares is no failure of the webhook's."""
        return Answer(results=[await self.one(alert) for alert in notification.alerts])

    async def one(self, alert: Alert) -> Result:
        name = alert.labels.get("alertname", "unnamed alert")
        alias = alert.labels.get(self.alias_label)
        if alias is None:
            return Result(alert=name, alias=None, outcome=Outcome.NOT_OURS,
                          detail=f"no {self.alias_label!r} label")
        if alert.status == "resolved":
            return Result(alert=name, alias=alias, outcome=Outcome.RESOLVED,
                          detail="resolved alerts never ramp again")
        seen = f"alert:{alert.fingerprint or name}@{alert.startsAt}"
        refused = await self._refusal(name, alias, seen)
        if refused is not None:
            return refused
        summary = alert.annotations.get("summary", "")
        reason = f"alert {name}" + (f": {summary}" if summary else "")
        try:
            change = await self.store.apply_with_retry(alias, ops.rollback, ALERT_ACTOR,
                                                       reason[:500])
        except (TransitionError, RuleError) as exc:
            return Result(alert=name, alias=alias, outcome=Outcome.REFUSED, detail=str(exc))
        await self.store.put_guard(alias, seen, msgspec.json.encode(
            {"revision": change.after.revision, "at": datetime.now(UTC).isoformat()}))
        if not change.changed:
            return Result(alert=name, alias=alias, outcome=Outcome.UNCHANGED,
                          detail=f"{alias} is already {change.after.state}",
                          revision=change.after.revision)
        log.warning("alert_rolled_back", alias=alias, alert=name, reason=reason,
                    revision=change.after.revision)
        return Result(alert=name, alias=alias, outcome=Outcome.ROLLED_BACK, detail=reason,
                      revision=change.after.revision)

    async def _refusal(self, name: str, alias: str, seen: str) -> Result | None:
        """Why this alert changes nothing, if it does not: an alias no rule declares, a
        replay, a promote past its watch window."""
        try:
            rollout = await self.store.get(alias)
        except NotFoundError:
            return Result(alert=name, alias=alias, outcome=Outcome.UNKNOWN_ALIAS,
                          detail=f"no rule declares {alias!r}; nothing changed")
        if seen in await self.store.guard_records(alias):
            return Result(alert=name, alias=alias, outcome=Outcome.REPLAY,
                          detail="this alert was acted on before", revision=rollout.revision)
        if rollout.state is State.PROMOTED and rollout.previous_stable is None:
            return Result(alert=name, alias=alias, outcome=Outcome.REFUSED, detail=(
                f"{alias}'s previous stable was retired: there is nothing to restore"),
                revision=rollout.revision)
        if rollout.state is State.PROMOTED and not watching(rollout, datetime.now(UTC)):
            return Result(alert=name, alias=alias, outcome=Outcome.REFUSED, detail=(
                f"{alias} was promoted at {rollout.promoted_at or rollout.updated_at}, more "
                f"than guard.watch_s ({rollout.guard.watch_s:g} s) ago: an alert no longer "
                "undoes it; roll back by hand if you mean it"), revision=rollout.revision)
        return None
