"""What a rule store is: the protocol the watcher, the operator and the tests hold on to, and the
parts every store shares, so the Redis store and the in-memory one differ only in storage.

A write is compare-and-set on the rule's revision: ``write`` stores a rule only if the stored
revision is still the one the writer read, stamps it (revision + 1, who, when, why), appends an
audit entry, lists the alias and notifies every subscriber, all at once. ``delete`` is the same
with a tombstone: the rule goes, its revision and audit stay, and ``deleted`` says it was meant.
An alias that is gone without a tombstone was lost (a flushed or failed-over store), and the
watcher keeps serving it until an operator ``restore``s it or deletes it.

``apply`` is read, transform with a pure action from ``rollout_rules.ops``, write back; a
concurrent writer makes it raise ConflictError rather than overwrite silently.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from datetime import UTC, datetime
from typing import Literal, Protocol

import msgspec
from msgspec.structs import replace

from rollout_rules.errors import ConflictError, NotFoundError, RuleError, TransitionError
from rollout_rules.model import Rollout, parse_rollout

OnSubscribed = Callable[[], Awaitable[None]] | None


class AuditEntry(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    revision: int
    actor: str
    reason: str
    at: str
    before: Rollout | None
    after: Rollout
    deleted: bool = False  # the change deleted the alias; ``after`` is the rule it removed


class Change(msgspec.Struct, frozen=True, kw_only=True):
    """What a write did: the rule before and after; ``changed`` is False for a no-op."""

    before: Rollout
    after: Rollout
    changed: bool
    warning: str = ""  # the change is made, but something about it needs saying


class Rules(Protocol):
    """The rules and their audit trail: read, compare-and-set, delete, restore."""

    unconfirmed: list[str]
    """Writes no replica confirmed (newest last, at most 10): a failover now would lose them."""

    async def aliases(self) -> list[str]: ...

    async def get(self, alias: str) -> Rollout:
        """The stored rule; NotFoundError if none, RuleError if what is stored is invalid."""
        ...

    async def revision(self, alias: str) -> int:
        """The stored revision, 0 when the alias is not declared."""
        ...

    async def history(self, alias: str, limit: int = 20) -> list[AuditEntry]: ...

    async def deleted(self, alias: str) -> bool:
        """Whether the alias was deleted on purpose (a tombstone), not merely absent."""
        ...

    async def write(self, rollout: Rollout, expected_revision: int, actor: str,
                    reason: str, *, floor: int = 0) -> Rollout:
        """Compare-and-set; the new revision is ``max(expected_revision, floor) + 1``."""
        ...

    async def delete(self, alias: str, expected_revision: int, actor: str,
                     reason: str) -> AuditEntry:
        """Remove the rule, leaving a tombstone and an audit entry; NotFoundError if none."""
        ...

    async def restore(self, rollout: Rollout, actor: str, reason: str) -> Rollout: ...

    async def create(self, rollout: Rollout, actor: str, reason: str,
                     replace_existing: bool = False) -> Rollout: ...

    async def apply(self, alias: str, action: Callable[[Rollout], Rollout], actor: str,
                    reason: str, expected_revision: int | None = None) -> Change: ...

    async def apply_with_retry(self, alias: str, action: Callable[[Rollout], Rollout],
                               actor: str, reason: str, attempts: int = 5) -> Change: ...


class ChangeFeed(Protocol):
    """Announcements of rule and coverage changes, for every proxy's watcher."""

    def changes(self, on_subscribed: OnSubscribed = None
                ) -> AsyncIterator[tuple[str, int | None]]:
        """(alias, revision) as rule changes are announced, (alias, None) as coverage changes;
        StoreUnavailable when the feed is lost. ``on_subscribed`` runs once the subscription
        stands, so nothing falls between."""
        ...


class Accounts(Protocol):
    """The backfill's progress as the gate reads it (coverage), and what users are answered
    (popularity, which the backfill takes first)."""

    async def set_coverage(self, alias: str, version: str, covered: int, total: int,
                           popular: float | None = None) -> None:
        """Record a version's coverage (and, when measured, the share of popular documents it
        holds) and announce it, so every proxy's gate follows at once."""
        ...

    async def coverage(self, alias: str, basis: CoverageBasis = "documents"
                       ) -> dict[str, float]:
        """Coverage per version that has reported a total, by documents or by popularity
        (documents where popularity was never measured)."""
        ...

    async def record_hits(self, alias: str, counts: Mapping[str, float]) -> None:
        """Add answer hits per point id (the backfill takes the most-answered first)."""
        ...

    async def most_popular(self, alias: str, count: int) -> list[tuple[str, float]]: ...


ReportKind = Literal["verify", "quality", "plan"]
"""A candidate's reports: its last ``verify`` and golden-set judgement (``promote`` reads them,
as ``rollout_rules.promotion``'s records) and its last ``plan`` (the backfill's end compares)."""


class Reports(Protocol):
    """The last report of each kind per candidate."""

    async def put_report(self, alias: str, version: str, kind: ReportKind,
                         report: Mapping[str, object]) -> None: ...

    async def report(self, alias: str, version: str, kind: ReportKind
                     ) -> dict[str, object] | None: ...


class Guarding(Protocol):
    """What the guard, the ramp and the drift watch keep between ticks and instances."""

    async def put_guard(self, alias: str, field: str, value: bytes) -> None:
        """Keep a guard record: each instance's counts (field = the instance) and the last
        verdict (field ``verdict``); the guard decides what is stale."""
        ...

    async def guard_records(self, alias: str) -> dict[str, bytes]: ...

    async def drop_guard(self, alias: str, field: str) -> None: ...

    async def take_lease(self, alias: str, name: str, holder: str, ttl_s: float) -> bool:
        """Hold the lease ``name`` of an alias for ``ttl_s`` (taking it if free or expired,
        extending it if ``holder`` has it); False while another holder has it."""
        ...

    async def put_ramp(self, alias: str, plan: bytes | None) -> None:
        """Store (None: remove) the alias's guarded ramp plan."""
        ...

    async def ramp(self, alias: str) -> bytes | None: ...


class RulesAndGuard(Rules, Guarding, Protocol):
    """What the guard and the ramp need: their records, and the rule they act on."""


class RuleStore(Rules, ChangeFeed, Accounts, Reports, Guarding, Protocol):
    """One store holding every role (Redis, or memory in unit tests); each part of the proxy
    asks for the roles it uses."""

    async def aclose(self) -> None: ...


class SharedWrites:
    """``create``, ``apply`` and ``apply_with_retry`` over a store's own ``get``, ``revision``
    and ``write``: one implementation for every store."""

    async def get(self, alias: str) -> Rollout:
        raise NotImplementedError

    async def revision(self, alias: str) -> int:
        raise NotImplementedError

    async def deleted(self, alias: str) -> bool:
        raise NotImplementedError

    async def write(self, rollout: Rollout, expected_revision: int, actor: str,
                    reason: str, *, floor: int = 0) -> Rollout:
        raise NotImplementedError

    async def restore(self, rollout: Rollout, actor: str, reason: str) -> Rollout:
        """Write back a rule the store lost (a proxy's last good snapshot), numbered after both
        the snapshot and whatever the store holds, so every watcher takes it as news."""
        try:
            stored = await self.get(rollout.alias)
        except NotFoundError:
            current = await self.revision(rollout.alias)
            return await self.write(rollout, current, actor, reason, floor=rollout.revision)
        raise TransitionError(f"{rollout.alias}: the store holds revision {stored.revision}; "
                              "only a rule the store lost can be restored")

    async def create(self, rollout: Rollout, actor: str, reason: str,
                     replace_existing: bool = False) -> Rollout:
        """Declare an alias; refuses to overwrite one unless ``replace_existing``. A deleted
        alias is declared afresh, its revisions continuing after the tombstone's."""
        again = replace_existing or await self.deleted(rollout.alias)
        expected = await self.revision(rollout.alias) if again else 0
        return await self.write(rollout, expected, actor, reason)

    async def apply(self, alias: str, action: Callable[[Rollout], Rollout], actor: str,
                    reason: str, expected_revision: int | None = None) -> Change:
        """Read, transform with a pure action, write back by compare-and-set.

        With ``expected_revision`` the caller asserts what it last saw; otherwise the revision
        just read is expected. Either way a concurrent writer makes this raise ConflictError
        rather than silently overwrite.
        """
        before = await self.get(alias)
        if expected_revision is not None and expected_revision != before.revision:
            raise ConflictError(alias, expected_revision, before.revision)
        after = action(before)
        if after == before:
            return Change(before=before, after=before, changed=False)
        stored = await self.write(after, before.revision, actor, reason)
        return Change(before=before, after=stored, changed=True,
                      warning=self.write_warning(alias, stored.revision))

    def write_warning(self, alias: str, revision: int) -> str:
        """What the operator should know of a write that succeeded ("" for nothing)."""
        return ""

    async def apply_with_retry(self, alias: str, action: Callable[[Rollout], Rollout],
                               actor: str, reason: str, attempts: int = 5) -> Change:
        """As ``apply``, re-reading on conflict: for automation whose intent is absolute
        (a rollback stays right whatever changed in between)."""
        for _ in range(attempts - 1):
            try:
                return await self.apply(alias, action, actor, reason)
            except ConflictError:
                continue
        return await self.apply(alias, action, actor, reason)


def stamp(rollout: Rollout, expected_revision: int, actor: str, reason: str,
          floor: int = 0) -> Rollout:
    """The rule as it will be stored by a write that expects ``expected_revision``."""
    return replace(rollout, revision=max(expected_revision, floor) + 1, updated_by=actor,
                   updated_at=now(), reason=reason)


def parse_stored(alias: str, document: str | bytes) -> Rollout:
    """A stored document as a rule; RuleError saying it is the stored one that is invalid."""
    try:
        return parse_rollout(document)
    except RuleError as exc:
        raise RuleError(exc.field, f"stored rule for {alias!r} is invalid: {exc.message}") \
            from exc


def lenient(document: str) -> Rollout | None:
    """A stored 'before' that no longer parses (written by hand) shows as absent, not a crash."""
    try:
        return parse_rollout(document) if document else None
    except RuleError:
        return None


CoverageBasis = Literal["completeness", "documents", "popularity"]
COVERAGE_MESSAGE = "coverage"  # announced on the change feed in place of a revision
PPM = 1_000_000


def coverage_fields(version: str, covered: int, total: int, popular: float | None
                    ) -> dict[str, int]:
    """A version's coverage as stored: counts, and the popular share in parts per million."""
    fields = {f"{version}:covered": covered, f"{version}:total": total}
    if popular is not None:
        fields[f"{version}:popular_ppm"] = round(min(1.0, max(0.0, popular)) * PPM)
    return fields


def coverage_fractions(fields: dict[str, int], basis: CoverageBasis = "documents"
                       ) -> dict[str, float]:
    """``{"<version>:covered": n, "<version>:total": m, "<version>:popular_ppm": p}`` as a
    fraction per version that has reported a total."""
    totals = {k.rsplit(":", 1)[0]: v for k, v in fields.items() if k.endswith(":total")}
    fractions = {}
    for version, total in totals.items():
        popular = fields.get(f"{version}:popular_ppm")
        if basis != "documents" and popular is not None:
            fractions[version] = popular / PPM
        else:
            fractions[version] = min(1.0, fields.get(f"{version}:covered", 0) / total) \
                if total else 0.0
    return fractions


def report_field(version: str, kind: ReportKind) -> str:
    """Where a report is kept in the alias's reports: a verify report under the version's name
    (as it always was), the others beside it as ``version@kind``."""
    return version if kind == "verify" else f"{version}@{kind}"


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
