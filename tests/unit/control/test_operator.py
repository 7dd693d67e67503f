"""Operator actions on the in-memory store are audited, compare-and-set and gated by coverage."""

from __future__ import annotations

import itertools

import pytest
from msgspec.structs import replace

from proxy.control.operator import Operator
from proxy.state.memory import MemoryRuleStore
from rollout_rules.errors import ConflictError, NotFoundError, RuleError, TransitionError
from rollout_rules.model import PromotionPolicy
from tests.unit.core.rollouts import rollout


@pytest.fixture
async def operator() -> Operator:
    store = MemoryRuleStore()
    await store.create(rollout(percent=0), "setup", "declare")
    return Operator(store, "alice@ops")


async def test_a_ramp_is_recorded_with_its_actor_and_capped_by_coverage(
        operator: Operator) -> None:
    change = await operator.set_percent("products", 40, "first ramp")
    assert (change.after.percent, change.after.updated_by, change.after.reason) == \
        (40, "alice@ops", "first ramp")
    assert (await operator.status("products")).effective_percent == 0  # no coverage yet
    status = await operator.set_coverage("products", "v2", 60, 100)
    assert (status.coverage_cap_percent, status.effective_percent) == (0, 0)  # below 99%
    status = await operator.set_coverage("products", "v2", 99, 100)
    assert (status.coverage_cap_percent, status.effective_percent) == (100, 40)
    assert [e.reason for e in await operator.history("products")] == ["first ramp", "declare"]


async def test_promote_needs_full_coverage_and_a_passed_verify_and_keeps_the_old_stable(
        operator: Operator) -> None:
    await operator.set_coverage("products", "v2", 90, 100)
    with pytest.raises(TransitionError, match="coverage"):
        await operator.promote("products")
    await operator.set_coverage("products", "v2", 100, 100)
    with pytest.raises(TransitionError, match="never verified"):
        await operator.promote("products")
    failed = {"stable": "v1", "passed": False, "missing": 3, "extra": 0,
              "envelope_mismatches": 0, "vector_mismatch_ids": []}
    await operator.store.put_report("products", "v2", "verify", failed)
    with pytest.raises(TransitionError, match=r"last verify failed \(3 missing"):
        await operator.promote("products")
    with pytest.raises(RuleError, match="needs a reason"):
        await operator.promote("products", force=True)
    await operator.store.put_report("products", "v2", "verify", {**failed, "passed": True,
                                                                "missing": 0})
    after = (await operator.promote("products")).after
    assert (after.stable, after.candidate, after.previous_stable) == ("v2", None, "v1")
    back = (await operator.rollback("products", "worse than before")).after
    assert (back.stable, back.state) == ("v1", "rolled_back")


async def test_bad_actions_are_refused_naming_what_is_wrong(operator: Operator) -> None:
    with pytest.raises(RuleError) as caught:
        await operator.rollback("products", "  ")
    assert caught.value.field == "reason"
    with pytest.raises(RuleError, match="v9"):
        await operator.set_coverage("products", "v9", 1, 2)
    with pytest.raises(RuleError, match="covered <= total"):
        await operator.set_coverage("products", "v2", 3, 2)
    with pytest.raises(NotFoundError):
        await operator.history("nope")
    await operator.pause("products")
    with pytest.raises(ConflictError) as conflict:
        await operator.resume("products", expected_revision=1)
    assert (conflict.value.expected, conflict.value.actual) == (1, 2)


async def test_a_deleted_alias_keeps_its_history_and_a_restore_brings_back_coverage() -> None:
    store = MemoryRuleStore()
    operator = Operator(store, "alice")
    declared = (await operator.declare(rollout(percent=20), "declare")).rollout
    with pytest.raises(RuleError):
        await operator.delete("products", " ")
    await operator.delete("products", "retired")
    assert [e.reason for e in await operator.history("products")] == ["retired", "declare"]
    store.lose_everything()
    restored = await operator.restore(declared, "from memory", {"v2": 0.6, "v9": 1.0})
    assert restored.percent == 20
    status = await operator.status("products")
    assert status.coverage == {"v2": 0.6} and status.effective_percent == 0  # 60% < 99%


async def test_a_forced_promotion_says_so_in_the_audit(operator: Operator) -> None:
    await operator.promote("products", "the golden set judged it; coverage catches up", True)
    entry = (await operator.history("products", 1))[0]
    assert entry.reason == "forced: the golden set judged it; coverage catches up"
    assert entry.after.stable == "v2"


async def test_a_rule_that_requires_a_judgement_refuses_promotion_without_one() -> None:
    store = MemoryRuleStore()
    strict = replace(rollout(percent=100), promotion=PromotionPolicy(require_quality=True))
    await store.create(strict, "setup", "declare")
    await store.set_coverage("products", "v2", 100, 100)
    await store.put_report("products", "v2", "verify", {"stable": "v1", "passed": True})
    operator = Operator(store, "alice@ops")
    with pytest.raises(TransitionError, match="no golden-set judgement"):
        await operator.promote("products")
    await store.put_report("products", "v2", "quality", {
        "stable": "v1", "stable_ndcg_at_10": 0.60, "candidate_ndcg_at_10": 0.595})
    assert (await operator.promote("products")).after.stable == "v2"  # within the 0.01 drop


async def test_promote_rollback_promote_leaves_consistent_rules_and_audit(
        operator: Operator) -> None:
    await operator.set_coverage("products", "v2", 100, 100)
    await operator.store.put_report("products", "v2", "verify", {"stable": "v1", "passed": True})
    await operator.set_percent("products", 100, "all in")
    first = (await operator.promote("products", "first promotion")).after
    back = (await operator.rollback("products", "worse in production")).after
    assert (back.stable, back.candidate, back.previous_stable, back.state, back.percent) == \
        ("v1", "v2", None, "rolled_back", 0)
    await operator.set_percent("products", 100, "fixed, again")
    again = (await operator.promote("products", "second promotion")).after
    assert (again.stable, again.candidate, again.previous_stable) == ("v2", None, "v1")
    assert again.revision == first.revision + 3
    history = await operator.history("products")
    assert [e.reason for e in history[:4]] == ["second promotion", "fixed, again",
                                               "worse in production", "first promotion"]
    assert all(newer.before == older.after for newer, older in itertools.pairwise(history))
