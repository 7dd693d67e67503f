"""The coverage gate lets nobody in below 99% by default, or caps the share step by step."""

from __future__ import annotations

import pytest

from rollout_rules.coverage import cap_bp, effective_bp, full_coverage
from rollout_rules.model import STEPPED, CoverageGate, CoverageStep


@pytest.mark.parametrize(("coverage", "cap_percent"), [
    (None, 0), (0.0, 0), (0.2, 0), (0.98, 0), (0.9899, 0), (0.99, 100), (1.0, 100),
])
def test_the_default_gate_lets_nobody_in_below_99_percent(coverage: float | None,
                                                         cap_percent: float) -> None:
    """Safe by default: at 20% backfilled no user reaches the candidate; at 99% they do."""
    assert CoverageGate().basis == "completeness"
    assert cap_bp(CoverageGate(), coverage) == cap_percent * 100


@pytest.mark.parametrize(("coverage", "cap_percent"), [
    (None, 0), (0.0, 0), (0.0001, 5), (0.49, 5), (0.5, 25), (0.79, 25), (0.8, 50),
    (0.949, 50), (0.95, 100), (1.0, 100),
])
def test_the_stepped_gate_caps_by_coverage(coverage: float | None, cap_percent: float) -> None:
    assert cap_bp(CoverageGate(steps=STEPPED), coverage) == cap_percent * 100


def test_a_disabled_gate_never_caps() -> None:
    assert cap_bp(CoverageGate(enabled=False), None) == 10_000


def test_effective_share_is_the_smaller_of_percent_and_cap() -> None:
    assert effective_bp(1_000, CoverageGate(steps=STEPPED), 0.3) == 500
    assert effective_bp(300, CoverageGate(steps=STEPPED), 0.3) == 300
    assert effective_bp(1_000, CoverageGate(), 0.3) == 0


def test_coverage_below_the_first_step_gets_nothing() -> None:
    gate = CoverageGate(steps=(CoverageStep(min_coverage=0.2, max_percent=10),))
    assert cap_bp(gate, 0.1) == 0
    assert full_coverage(gate) == 1.0
    assert full_coverage(CoverageGate()) == 0.99
    assert full_coverage(CoverageGate(steps=STEPPED)) == 0.95
