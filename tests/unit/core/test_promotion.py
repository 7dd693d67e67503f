"""The promote gate reads typed records and says the one reason that stands in the way."""

from __future__ import annotations

from msgspec.structs import replace

from rollout_rules.model import PromotionPolicy
from rollout_rules.promotion import (
    QualityRecord,
    VerifyRecord,
    blocked,
    quality_passes,
    read_record,
)
from tests.unit.core.rollouts import rollout

PASSED = VerifyRecord(stable="v1", passed=True)
JUDGED = QualityRecord(stable="v1", stable_ndcg_at_10=0.60, candidate_ndcg_at_10=0.595)


def test_a_candidate_is_promoted_only_verified_against_this_stable_and_not_worse() -> None:
    r = rollout(percent=100)
    assert blocked(r, PASSED, None) is None and blocked(r, PASSED, JUDGED) is None
    assert blocked(r, None, None) == "it was never verified"
    assert blocked(r, replace(PASSED, stable="v0"), None) == \
        "it was verified against v0, stable is v1"
    failed = VerifyRecord(stable="v1", passed=False, missing=3, extra=1,
                          vector_mismatch_ids=[7, 8])
    assert blocked(r, failed, None) == ("its last verify failed (3 missing, 1 extra, 0 envelope "
                                        "mismatches, 2 vectors off)")
    worse = replace(JUDGED, candidate_ndcg_at_10=0.58)
    assert blocked(r, PASSED, worse) == ("its nDCG@10 on the golden set is 0.5800, stable's "
                                         "0.6000: more than 0.01 worse")
    strict = replace(r, promotion=PromotionPolicy(require_quality=True))
    assert str(blocked(strict, PASSED, None)).startswith("it has no golden-set judgement")


def test_a_report_that_cannot_be_read_stands_in_the_way_saying_so() -> None:
    unreadable = read_record({"stable": "v1", "passed": "maybe"}, VerifyRecord)
    assert isinstance(unreadable, str) and unreadable.startswith("its last report cannot be")
    assert blocked(rollout(percent=100), unreadable, None) == unreadable
    assert read_record(None, VerifyRecord) is None
    assert read_record({"stable": "v1", "passed": True, "at": "x"}, VerifyRecord) == PASSED


def test_the_quality_rule_is_one_rule() -> None:
    assert quality_passes(0.60, 0.59, 0.01) and not quality_passes(0.60, 0.5899, 0.01)
