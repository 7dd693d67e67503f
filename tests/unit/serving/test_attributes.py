"""A query's spans are named from what the request path knows, in one place."""

from __future__ import annotations

from proxy.models.catalog import default_rollout
from proxy.serving.attributes import answer_attributes, stage_attributes
from proxy.serving.query import Found
from proxy.telemetry import Attr
from proxy.vectors.base import Hit
from rollout_rules.decide import Decision, Reason


def test_the_answer_says_which_version_why_and_how() -> None:
    version = default_rollout("p").version("v2")
    decision = Decision("v2", Reason.BUCKET_IN, 17, 4, 25.0)
    said = answer_attributes("p", version, decision, Found([Hit(1, 0.5, {})], True, False))
    assert said[Attr.VERSION] == "v2" and said[Attr.REASON] == "bucket_in"
    assert said[Attr.BUCKET] == 17 and said[Attr.RULE_REVISION] == "4"
    assert said[Attr.HIT_COUNT] == 1 and said[Attr.RESULT_CACHE_HIT] is True
    assert said[Attr.DB_COLLECTION] == version.target.collection
    missing = answer_attributes("p", version, Decision("v1", Reason.MISSING_KEY, None, 4, 0.0),
                                Found([], False, False))
    assert missing[Attr.BUCKET] == -1  # attributes hold no None


def test_a_stage_names_its_database_only_when_it_searches() -> None:
    version = default_rollout("p").version("v1")
    assert Attr.DB_SYSTEM not in stage_attributes(version, "encode")
    searching = stage_attributes(version, "search")
    assert searching[Attr.DB_COLLECTION] == version.target.collection
    assert Attr.HIT_COUNT not in searching
    assert stage_attributes(version, "search", 3)[Attr.HIT_COUNT] == 3
