"""The promote gate beyond coverage: a candidate's last ``verify`` and golden-set judgement,
as typed records, and the one rule that reads them. Pure.

The records are what the verify and quality routes keep in the rule store (their reports carry
more; only these fields are read). A report that cannot be read as its record stands in the way
like a missing one would, saying so.
"""

from __future__ import annotations

from typing import Any, TypeVar

import msgspec

from rollout_rules.model import Rollout

T = TypeVar("T")


class VerifyRecord(msgspec.Struct, frozen=True, kw_only=True):
    """A candidate's last ``verify`` report, as the gate reads it."""

    stable: str
    passed: bool
    missing: int = 0
    extra: int = 0
    envelope_mismatches: int = 0
    vector_mismatch_ids: list[Any] = msgspec.field(default_factory=list)


class QualityRecord(msgspec.Struct, frozen=True, kw_only=True):
    """A candidate's last golden-set judgement, as the gate reads it."""

    stable: str
    stable_ndcg_at_10: float
    candidate_ndcg_at_10: float
    stable_precision_at_5: float | None = None
    candidate_precision_at_5: float | None = None


def quality_passes(stable_ndcg: float, candidate_ndcg: float, max_drop: float) -> bool:
    """The candidate is at most ``max_drop`` below stable's nDCG@10 (the one rule: ``eval
    --alias`` reports it, ``promote`` enforces it)."""
    return candidate_ndcg >= stable_ndcg - max_drop - 1e-12


def read_record(raw: dict[str, object] | None, kind: type[T]) -> T | str | None:
    """A stored report as its record; None when there is none; a sentence when it cannot be
    read (written by another release, or damaged)."""
    if raw is None:
        return None
    try:
        return msgspec.convert(raw, type=kind)
    except msgspec.ValidationError as exc:
        return f"its last report cannot be read ({exc})"


def blocked(rollout: Rollout, verify: VerifyRecord | str | None,
            quality: QualityRecord | str | None) -> str | None:
    """Why the candidate may not be promoted yet: its last verify did not pass against the
    current stable, or its golden-set judgement failed (or is missing where the rule requires
    one); None when nothing stands in the way."""
    if rollout.candidate is None:
        return None
    if verify is None:
        return "it was never verified"
    if isinstance(verify, str):
        return verify
    if verify.stable != rollout.stable:
        return f"it was verified against {verify.stable}, stable is {rollout.stable}"
    if not verify.passed:
        return (f"its last verify failed ({verify.missing} missing, {verify.extra} extra, "
                f"{verify.envelope_mismatches} envelope mismatches, "
                f"{len(verify.vector_mismatch_ids)} vectors off)")
    return _unjudged(rollout, quality)


def _unjudged(rollout: Rollout, quality: QualityRecord | str | None) -> str | None:
    if isinstance(quality, str):
        return "its golden-set judgement is unreadable"
    if quality is None or quality.stable != rollout.stable:
        return ("it has no golden-set judgement (embedshift eval --alias "
                f"{rollout.alias} --dataset ...)") if rollout.promotion.require_quality else None
    margin = rollout.promotion.max_ndcg_drop
    if not quality_passes(quality.stable_ndcg_at_10, quality.candidate_ndcg_at_10, margin):
        return (f"its nDCG@10 on the golden set is {quality.candidate_ndcg_at_10:.4f}, "
                f"stable's {quality.stable_ndcg_at_10:.4f}: more than {margin} worse")
    return None
