"""Operator actions against the rule store: the one implementation the CLI and admin API share.

Each action is a pure transition from ``rollout_rules.ops`` applied by compare-and-set, so two
operators racing never lose an update: the second gets a ConflictError naming both revisions.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from functools import partial
from pathlib import Path

import msgspec

from proxy.control.verdicts import GuardStatus, guard_status, merged_windows, ramp_status
from proxy.state.answers import AnswerLog
from proxy.state.base import AuditEntry, Change, RuleStore, now
from rollout_rules import ops
from rollout_rules.coverage import cap_bp
from rollout_rules.decide import Context, Decision, decide
from rollout_rules.errors import AlreadyDeclared, ConflictError, NotFoundError, RuleError
from rollout_rules.model import Rollout
from rollout_rules.online import QualityTable, online_blocks, online_of, quality_table
from rollout_rules.promotion import QualityRecord, VerifyRecord, blocked, read_record
from rollout_rules.ramp import RampPlan
from rollout_rules.spec import apply_file, differences, first_declaration

RESTORED_TOTAL = 10_000
UNDO_REACH = 1000  # audit entries an undo looks back through


class Status(msgspec.Struct, frozen=True, kw_only=True):
    """A rollout as an operator sees it: the rule plus what coverage makes of it."""

    rollout: Rollout
    coverage: dict[str, float]
    candidate_coverage: float | None
    coverage_cap_percent: float
    effective_percent: float
    guard: GuardStatus | None = None  # the guard's last verdict on this revision
    ramp: RampPlan | None = None  # the guarded ramp, if one is planned
    # online figures per version and interleaved pair (``rollout_rules.online.online_table``)
    online: dict[str, dict[str, float | None]] = msgspec.field(default_factory=dict)
    online_missing: str | None = None  # what promotion.require_online still waits for


class Declared(msgspec.Struct, frozen=True, kw_only=True):
    """What declaring or applying a rules file did (or, for ``diff``, would do)."""

    rollout: Rollout
    changed: bool
    differences: list[str]  # field by field
    kept: list[str]  # what the file says that the rule's status keeps, and why


class Explanation(msgspec.Struct, frozen=True, kw_only=True):
    decision: Decision
    context: Context
    status: Status


class Operator:
    def __init__(self, store: RuleStore, actor: str, models_dir: Path | None = None,
                 answers: AnswerLog | None = None) -> None:
        """``models_dir``: the model catalogue declared versions are checked against (their
        model known, its dimensions and normalisation agreed); None: not checked.
        ``answers``: where the online evidence is counted (None: there is none)."""
        self.store = store
        self.actor = actor
        self.models_dir = models_dir
        self.answers = answers

    async def online_counts(self, alias: str) -> dict[str, float]:
        """The alias's online counts (``proxy.state.answers``); none without an answer log."""
        return {} if self.answers is None else await self.answers.counts(alias)

    async def status(self, alias: str) -> Status:
        rollout = await self.store.get(alias)
        found = status_of(rollout, await self.store.coverage(alias, rollout.coverage_gate.basis))
        counts = await self.online_counts(alias)
        return msgspec.structs.replace(found, guard=await guard_status(self.store, rollout),
                                       ramp=await ramp_status(self.store, rollout),
                                       online=online_of(rollout, counts),
                                       online_missing=online_blocks(rollout, counts))

    async def quality(self, alias: str) -> QualityTable:
        """The alias's per-version table (``rollout_rules.online.quality_table``): the
        candidate's golden-set judgement, the shared online counts, and every proxy's
        operational counts of the last minute."""
        rollout = await self.store.get(alias)
        golden = None
        if rollout.candidate is not None:
            found = read_record(await self.store.report(alias, rollout.candidate, "quality"),
                                QualityRecord)
            golden = found if isinstance(found, QualityRecord) else None
        windows, _ = await merged_windows(self.store, rollout, fresh_s=60.0)
        return quality_table(rollout, await self.online_counts(alias), golden, windows)

    async def statuses(self) -> list[Status]:
        return [await self.status(alias) for alias in await self.store.aliases()]

    async def declare(self, rollout: Rollout, reason: str, replace_existing: bool = False,
                      take_status: bool = False) -> Declared:
        """Declare an alias from a rules file, or apply the file to the declared one
        (``replace_existing``): its spec merged in, its status kept (``rollout_rules.spec``);
        a file that changes nothing writes nothing."""
        if self.models_dir is not None:
            from proxy.models.catalog import check_models  # the CLI's other commands skip it

            check_models(rollout, self.models_dir)
        current = await self._current(rollout.alias)
        if current is None:
            stored = await self.store.create(first_declaration(rollout), self.actor,
                                             reason or "declared")
            return Declared(rollout=stored, changed=True, differences=[], kept=[])
        if not replace_existing:
            raise AlreadyDeclared(rollout.alias, current.revision)
        applied = apply_file(current, rollout, take_status=take_status)
        changes = differences(current, applied.rollout)
        if not changes:  # the live rule stays as it is: no write, no audit entry
            return Declared(rollout=current, changed=False, differences=[], kept=applied.kept)
        stored = await self.store.write(applied.rollout, current.revision, self.actor,
                                        reason or "rules file applied")
        return Declared(rollout=stored, changed=True, differences=changes, kept=applied.kept)

    async def diff(self, rollout: Rollout, take_status: bool = False) -> Declared:
        """What applying the file would do, written nowhere."""
        current = await self.store.get(rollout.alias)
        applied = apply_file(current, rollout, take_status=take_status)
        changes = differences(current, applied.rollout)
        return Declared(rollout=applied.rollout, changed=bool(changes), differences=changes,
                        kept=applied.kept)

    async def undo(self, alias: str, revision: int, reason: str,
                   expected_revision: int | None = None) -> Change:
        """Write the rule back as it was at ``revision`` (from the audit trail), as a new
        revision: status and spec alike, audited as an undo."""
        current = await self.store.get(alias)
        if expected_revision is not None and expected_revision != current.revision:
            raise ConflictError(alias, expected_revision, current.revision)
        entries = await self.store.history(alias, UNDO_REACH)
        found = next((e for e in entries if e.revision == revision and not e.deleted), None)
        if found is None:
            raise RuleError("to_revision", f"{alias} has no revision {revision} in its last "
                                           f"{UNDO_REACH} audit entries (see `embedshift "
                                           f"history {alias}`)")
        target = msgspec.structs.replace(found.after, revision=current.revision)
        if target == current:
            return Change(before=current, after=current, changed=False)
        why = f"undo to revision {revision}" + (f": {reason}" if reason.strip() else "")
        stored = await self.store.write(target, current.revision, self.actor, why)
        return Change(before=current, after=stored, changed=True)

    async def _current(self, alias: str) -> Rollout | None:
        """The declared rule, or None for an alias never declared or deleted."""
        if await self.store.deleted(alias):
            return None
        try:
            return await self.store.get(alias)
        except NotFoundError:
            return None

    async def set_percent(self, alias: str, percent: float, reason: str = "",
                          expected_revision: int | None = None) -> Change:
        percent += 0.0  # -0.0 is 0: neither the rule nor its audit reason says "-0"
        action = partial(ops.set_percent, percent=percent)
        return await self._apply(alias, action, reason or f"ramp to {percent:g}%",
                                 expected_revision)

    async def pause(self, alias: str, reason: str = "", expected_revision: int | None = None
                    ) -> Change:
        return await self._apply(alias, ops.pause, reason or "paused", expected_revision)

    async def resume(self, alias: str, reason: str = "", expected_revision: int | None = None
                     ) -> Change:
        return await self._apply(alias, ops.resume, reason or "resumed", expected_revision)

    async def rollback(self, alias: str, reason: str, expected_revision: int | None = None
                       ) -> Change:
        if not reason.strip():
            raise RuleError("reason", "a rollback needs a reason: say what went wrong")
        return await self._apply(alias, ops.rollback, reason, expected_revision)

    async def set_guard(self, alias: str, changes: dict[str, object], reason: str = "",
                        expected_revision: int | None = None) -> Change:
        """Change fields of the alias's guard policy (thresholds, shadow share, watch)."""
        action = partial(ops.set_guard, changes=changes)
        what = ", ".join(f"{k}={v}" for k, v in changes.items())
        return await self._apply(alias, action, reason or f"guard: {what}", expected_revision)

    async def retire(self, alias: str, reason: str, expected_revision: int | None = None,
                     force: bool = False) -> Change:
        """Drop the previous stable version (a rollback can no longer reach it); inside the
        promote's watch only when forced."""
        if not reason.strip():
            raise RuleError("reason", "retiring the previous stable needs a reason")
        action = partial(ops.retire, now=datetime.now(UTC), force=force)
        return await self._apply(alias, action, f"forced: {reason}" if force else reason,
                                 expected_revision)

    async def promote(self, alias: str, reason: str = "", force: bool = False,
                      expected_revision: int | None = None) -> Change:
        """Make the candidate stable: refused unless its coverage is complete and its last
        ``verify`` passed, or forced with a reason (the audit entry says it was forced)."""
        if force and not reason.strip():
            raise RuleError("reason", "forcing a promotion needs a reason: say why the gate "
                                      "may be skipped")
        current = await self.store.get(alias)
        coverage = await self.store.coverage(alias)  # by documents: promote needs every one
        unverified = await self.unverified(current)

        def action(rollout: Rollout) -> Rollout:
            return ops.promote(rollout, coverage.get(rollout.candidate or ""), force=force,
                               unverified=unverified if rollout.candidate ==
                               current.candidate else "the candidate changed meanwhile",
                               at=now())

        why = f"forced: {reason}" if force else reason or "promoted"
        return await self._apply(alias, action, why, expected_revision)

    async def unverified(self, rollout: Rollout) -> str | None:
        """Why the candidate may not be promoted yet (``rollout_rules.promotion.blocked`` over
        its last verify and golden-set judgement); None when nothing stands in the way."""
        if rollout.candidate is None:
            return None
        alias, candidate = rollout.alias, rollout.candidate
        verify = read_record(await self.store.report(alias, candidate, "verify"), VerifyRecord)
        quality = read_record(await self.store.report(alias, candidate, "quality"),
                              QualityRecord)
        return blocked(rollout, verify, quality) or online_blocks(
            rollout, await self.online_counts(alias))

    async def delete(self, alias: str, reason: str, expected_revision: int | None = None
                     ) -> AuditEntry:
        """Delete an alias on purpose: every proxy stops serving it (one that merely vanished
        from the store is kept). Audited; a reason is required."""
        if not reason.strip():
            raise RuleError("reason", "deleting an alias needs a reason")
        current = (await self.store.get(alias)).revision
        if expected_revision is not None and expected_revision != current:
            raise ConflictError(alias, expected_revision, current)
        return await self.store.delete(alias, current, self.actor, reason)

    async def delete_vanished(self, snapshot: Rollout, reason: str) -> AuditEntry:
        """Delete on purpose an alias the store lost but a proxy still serves from memory:
        its snapshot is written back (audited as such), then deleted (audited), so every
        proxy obeys the deletion and the revisions go on after every one seen."""
        if not reason.strip():
            raise RuleError("reason", "deleting an alias needs a reason")
        restored = await self.store.restore(snapshot, self.actor,
                                            f"restored from memory to be deleted: {reason}")
        return await self.store.delete(snapshot.alias, restored.revision, self.actor, reason)

    async def restore(self, rollout: Rollout, reason: str,
                      coverage: dict[str, float] | None = None) -> Rollout:
        """Write back a rule the store lost, from a proxy's last good snapshot, and the coverage
        that proxy last read for each version the store now has none for (as a fraction in
        0.01% steps: the backfill's next report replaces it with its counts)."""
        restored = await self.store.restore(rollout, self.actor,
                                            reason or f"restored revision {rollout.revision}")
        recorded = await self.store.coverage(rollout.alias)
        for version, fraction in (coverage or {}).items():
            if version not in recorded and rollout.has_version(version):
                await self.store.set_coverage(rollout.alias, version,
                                              round(fraction * RESTORED_TOTAL), RESTORED_TOTAL)
        return restored

    async def history(self, alias: str, limit: int = 20) -> list[AuditEntry]:
        """Newest first; a deleted alias keeps its history. NotFoundError for an alias never
        declared, not an empty list."""
        entries = await self.store.history(alias, limit)
        if not entries:
            await self.store.get(alias)
        return entries

    async def explain(self, alias: str, context: Context, override: str | None = None
                      ) -> Explanation:
        status = await self.status(alias)
        decision = decide(status.rollout, context, status.candidate_coverage, override)
        return Explanation(decision=decision, context=context, status=status)

    async def set_coverage(self, alias: str, version: str, covered: int, total: int) -> Status:
        rollout = await self.store.get(alias)
        rollout.version(version)  # RuleError naming the declared versions
        if total <= 0 or not 0 <= covered <= total:
            raise RuleError("coverage", f"need 0 <= covered <= total and total > 0, got "
                                        f"{covered}/{total}")
        await self.store.set_coverage(alias, version, covered, total)
        return await self.status(alias)

    async def _apply(self, alias: str, action: Callable[[Rollout], Rollout], reason: str,
                     expected_revision: int | None) -> Change:
        return await self.store.apply(alias, action, self.actor, reason, expected_revision)


def status_of(rollout: Rollout, coverage: dict[str, float]) -> Status:
    candidate_coverage = coverage.get(rollout.candidate) if rollout.candidate else None
    cap = cap_bp(rollout.coverage_gate, candidate_coverage) / 100
    probe = decide(rollout, Context(), candidate_coverage)
    return Status(rollout=rollout, coverage=coverage, candidate_coverage=candidate_coverage,
                  coverage_cap_percent=cap, effective_percent=probe.effective_percent)
