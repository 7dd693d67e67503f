"""The coverage gate's arithmetic: how much of the corpus v2 holds caps how many users it serves.

Searching a half-filled collection returns half the answers, so a candidate's share is capped by a
step function of its backfill coverage. Coverage unknown or zero means the candidate gets nothing.
"""

from __future__ import annotations

from rollout_rules.model import BASIS_POINTS, CoverageGate


def cap_bp(gate: CoverageGate, coverage: float | None) -> int:
    """The most basis points the gate allows at this coverage (0..10,000)."""
    if not gate.enabled:
        return BASIS_POINTS
    if coverage is None or coverage <= 0.0:
        return 0
    allowed = 0.0
    for step in gate.steps:
        if coverage < step.min_coverage:
            break
        allowed = step.max_percent
    return round(allowed * 100)


def effective_bp(percent_bp: int, gate: CoverageGate, coverage: float | None) -> int:
    """The operator's share capped by the gate."""
    return min(percent_bp, cap_bp(gate, coverage))


def full_coverage(gate: CoverageGate) -> float:
    """The least coverage at which the gate allows 100% (promotion needs it)."""
    for step in gate.steps:
        if step.max_percent >= 100.0:
            return step.min_coverage
    return 1.0
