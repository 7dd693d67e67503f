"""Qdrant's query shapes are read as the clients send them, and what is not served is named."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from proxy.qdrant_api.shapes import (
    GroupsBody,
    Incoming,
    QueryBody,
    Recommend,
    SearchBody,
    Selector,
    average_vector,
    groups_of,
    point_ids,
    read_groups,
    read_index,
    read_offset,
    read_payload_change,
    read_points,
    read_query,
    read_recommend,
    read_search,
    read_selector,
    read_stage,
    record,
    scored_points,
)
from proxy.vectors.base import Fusion, Hit, Nearest, Sparse, Stage
from rollout_rules.errors import RuleError
from rollout_rules.model import Target, Version


def _query(**body: Any) -> QueryBody:
    return msgspec.convert(body, QueryBody)


@pytest.mark.parametrize("query", [
    {"nearest": {"text": "warm jacket", "model": "any/model"}},  # qdrant-client, Document
    {"text": "warm jacket", "model": "v2"},  # a bare Document (the JS client, prefetch)
    {"nearest": {"object": "warm jacket", "model": "x"}},  # an InferenceObject
])
def test_text_arrives_however_the_clients_wrap_it_and_the_model_never_picks(
        query: dict[str, Any]) -> None:
    ask = read_query(_query(query=query, limit=3, offset=2))
    assert (ask.text, ask.vector, ask.limit, ask.offset, ask.window) == \
        ("warm jacket", None, 3, 2, 5)


def test_a_list_of_numbers_is_a_vector_under_query_or_legacy_search() -> None:
    assert read_query(_query(query={"nearest": [1, 2.5]})).vector == [1.0, 2.5]
    assert read_search(msgspec.convert({"vector": [1, 2]}, SearchBody)).vector == [1.0, 2.0]
    named = msgspec.convert({"vector": {"name": "", "vector": [3]}}, SearchBody)
    assert read_search(named).vector == [3.0]


@pytest.mark.parametrize(("body", "field", "says"), [
    ({"query": "c0ffee00-0000-0000-0000-000000000000"}, "query", "point id"),
    ({"query": 7}, "query", "point id"),
    ({}, "query", "a query is needed"),
    ({"query": {"discover": {"target": 1}}}, "query", "discover"),
    ({"query": {"nearest": [1, True]}}, "query", "list of numbers"),
    ({"query": {"text": 5, "model": "m"}}, "query.text", "string"),
    ({"prefetch": {"query": [1.0], "prefetch": {}}}, "prefetch.prefetch", "not served"),
    ({"query": [1.0], "with_vector": ["dense"]}, "with_vector", "unnamed"),
    ({"query": [1.0], "limit": 990, "offset": 20}, "limit", "at most 1000"),
    ({"query": [1.0], "with_payload": ["_embedshift.text"]}, "with_payload",
     "cannot be selected"),
    ({"query": [1.0], "with_payload": {"exclude": ['"_embedshift"']}}, "with_payload.exclude",
     "cannot be selected"),
    ({"query": [1.0], "with_payload": {"only": ["a"]}}, "with_payload", "include"),
])
def test_what_is_not_served_is_a_400_naming_the_field(body: dict[str, Any], field: str,
                                                       says: str) -> None:
    with pytest.raises(RuleError) as refused:
        read_query(_query(**body))
    assert refused.value.field == field and says in str(refused.value)


@pytest.mark.parametrize("body", [
    {"query": [1.0], "prefetch": [{"query": [1.0]}]},
    {"prefetch": [{"query": [1.0]}, {"query": [2.0]}], "query": {"fusion": "rrf"}},
    {"query": [1.0], "using": "dense"},
    {"query": {"nearest": {"indices": [1], "values": [0.5]}}, "using": "s"},
])
def test_what_is_more_than_one_vector_is_read_as_a_stage(body: dict[str, Any]) -> None:
    ask = read_query(_query(**body))
    assert ask.stage is not None and (ask.text, ask.vector) == (None, None)


def test_prefetches_nest_and_fuse_as_the_frameworks_send_them() -> None:
    dense, sparse = [0.1, 0.2], {"indices": [3, 9], "values": [0.5, 0.25]}
    langchain = read_stage(_query(
        prefetch=[{"query": dense, "using": "", "limit": 4},
                  {"query": sparse, "using": "langchain-sparse", "limit": 4}],
        query={"fusion": "rrf"}, limit=4, offset=2))
    assert langchain.query == Fusion("rrf") and langchain.limit == 6
    assert [p.query for p in langchain.prefetch] == [
        Nearest("", dense), Nearest("langchain-sparse", Sparse([3, 9], [0.5, 0.25]))]
    haystack = read_stage(_query(  # no prefetch limits: Qdrant's 10; RRF with k and weights
        prefetch=[{"query": sparse, "using": "text-sparse"},
                  {"query": dense, "using": "text-dense"}],
        query={"rrf": {"k": 60, "weights": [1.0, 2.0]}}, limit=3))
    assert haystack.query == Fusion("rrf", 60, [1.0, 2.0])
    assert [p.limit for p in haystack.prefetch] == [10, 10]
    nested = read_stage(_query(prefetch={"prefetch": [
        {"query": dense, "using": "d"}, {"query": {"nearest": sparse}, "using": "s"}],
        "query": {"fusion": "dbsf"}, "limit": 20}, query={"nearest": dense}, using="d"))
    assert nested.query == Nearest("d", dense) and nested.prefetch[0].query == Fusion("dbsf")
    assert len(nested.prefetch[0].prefetch) == 2


def test_the_legacy_search_names_a_dense_or_sparse_vector() -> None:
    for vector, read in (([0.5, 0.25], [0.5, 0.25]),
                         ({"indices": [4], "values": [0.5]}, Sparse([4], [0.5]))):
        body = msgspec.convert({"vector": {"name": "v", "vector": vector}, "limit": 3},
                               SearchBody)
        ask = read_search(body)
        assert ask.stage == Stage(Nearest("v", read), 3)


@pytest.mark.parametrize(("body", "field"), [
    ({"query": {"fusion": "max"}, "prefetch": [{"query": [1.0]}]}, "query.fusion"),
    ({"query": {"fusion": "rrf"}}, "query"),
    ({"query": {"rrf": {"k": 0}}, "prefetch": [{"query": [1.0]}]}, "query.rrf.k"),
    ({"query": {"fusion": "rrf"}, "prefetch": [{"query": {"indices": [1, 1],
                                                          "values": [1, 2]}}]},
     "prefetch[0].query.indices"),
    ({"query": {"fusion": "rrf"}, "prefetch": [{"query": [1.0], "limit": 5000}]},
     "prefetch[0].limit"),
    ({"query": {"fusion": "rrf"}, "prefetch": [{"query": [1.0], "formula": {}}]},
     "prefetch[0].formula"),
])
def test_what_a_staged_query_cannot_hold_is_named(body: dict[str, Any], field: str) -> None:
    with pytest.raises(RuleError) as refused:
        read_stage(_query(**body))
    assert refused.value.field == field


def test_payload_selectors_read_as_qdrant_reads_them() -> None:
    assert read_selector(None) == Selector(True)
    assert read_selector(False) == Selector(False)
    assert read_selector(["a"]) == Selector(True, include=frozenset({"a"}))
    assert read_selector({"include": ["a"]}) == Selector(True, include=frozenset({"a"}))
    assert read_selector({"exclude": ["b"]}) == Selector(True, exclude=frozenset({"b"}))


def _version(metric: str) -> Version:
    return msgspec.convert({"name": "v1", "model": "m", "dimensions": 2, "metric": metric,
                            "target": msgspec.to_builtins(Target(collection="c"))}, Version)


HITS = [Hit(id=n, score=score, payload={"a": n, "b": -n})
        for n, score in enumerate([0.9, 0.8, 0.7, 0.6])]


def test_a_page_is_cut_after_the_offset_then_by_the_threshold_and_shaped() -> None:
    ask = read_query(_query(query=[1.0], limit=2, offset=1, score_threshold=0.75,
                            with_payload=["a"]))
    assert scored_points(HITS, ask, _version("cosine")) == [
        {"id": 1, "version": 0, "score": 0.8, "payload": {"a": 1}, "vector": None}]


def test_a_distance_threshold_keeps_what_is_closer() -> None:
    ask = read_query(_query(query=[1.0], limit=4, score_threshold=0.75, with_payload=False))
    kept = scored_points(HITS, ask, _version("euclid"))
    assert [p["id"] for p in kept] == [2, 3] and all(p["payload"] is None for p in kept)


def test_upserts_read_documents_and_vectors_in_either_form() -> None:
    doc = {"text": "a note", "model": "any"}
    points = read_points({"points": [{"id": 1, "vector": doc, "payload": {"a": 1}},
                                     {"id": "u-2", "vector": {"": [0.5, 1]}}]})
    assert points == [Incoming(1, "a note", None, {"a": 1}), Incoming("u-2", None, [0.5, 1.0], {})]
    batch = read_points({"batch": {"ids": [3], "vectors": [doc], "payloads": [{"b": 2}]}})
    assert batch == [Incoming(3, "a note", None, {"b": 2})]


@pytest.mark.parametrize(("body", "field"), [
    ({"points": [{"id": -1, "vector": [1.0]}]}, "points[0].id"),
    ({"points": [{"id": True, "vector": [1.0]}]}, "points[0].id"),
    ({"points": [{"id": 1, "vector": {"dense": "x"}}]}, "points[0].vector.dense"),
    ({"points": [{"id": 1, "vector": [1.0], "payload": {"_embedshift": {}}}]},
     "points[0].payload"),
    ({"points": [{"id": 1, "vector": "text"}]}, "points[0].vector"),
    ({"batch": {"ids": [1, 2], "vectors": [[1.0]]}}, "batch"),
    ({"points": []}, "points"),
    ({"upsert": []}, "body"),
])
def test_an_upsert_that_cannot_be_read_names_its_field(body: dict[str, Any], field: str) -> None:
    with pytest.raises(RuleError) as refused:
        read_points(body)
    assert refused.value.field == field


def test_deletes_and_retrieves_name_points_by_id() -> None:
    assert point_ids({"points": [1, "u"]}) == [1, "u"]
    assert point_ids({"ids": [2]}, "ids") == [2]
    with pytest.raises(RuleError, match="list of point ids"):
        point_ids({"points": [True]})
    assert record(7, {"a": 1, "_embedshift": {"text": "secret"}}, Selector(True)) == \
        {"id": 7, "payload": {"a": 1}, "vector": None}


CANONICAL = "c0a96bba-d8b3-5649-b6ea-53fd654a23c9"


@pytest.mark.parametrize("spelling", [
    "c0a96bbad8b35649b6ea53fd654a23c9", "C0A96BBAD8B35649B6EA53FD654A23C9", CANONICAL,
    CANONICAL.upper(), "{" + CANONICAL + "}", "urn:uuid:" + CANONICAL])
def test_every_uuid_spelling_qdrant_accepts_names_one_point_in_its_canonical_form(
        spelling: str) -> None:
    assert point_ids({"points": [spelling]}) == [CANONICAL]
    assert read_offset(spelling) == CANONICAL
    [point] = read_points({"points": [{"id": spelling, "vector": [0.1]}]})
    assert point.id == CANONICAL
    assert read_recommend({"positive": [spelling]}).positive == [CANONICAL]


def test_strings_that_are_no_uuid_spelling_stay_as_given() -> None:
    # an alias's documents keep their own ids; a near-UUID is not silently read as one
    for text in ("doc-7", "c0a96bba-d8b35649-b6ea-53fd654a23c9",
                 "{c0a96bbad8b35649b6ea53fd654a23c9}", "URN:UUID:" + CANONICAL, CANONICAL + "0"):
        assert point_ids({"points": [text]}) == [text] and read_offset(text) == text
    with pytest.raises(RuleError, match="offset"):
        read_offset(True)


def test_a_deep_page_is_bounded_by_the_setting_not_a_constant() -> None:
    body = QueryBody(query=[1.0], limit=500)
    assert read_query(body).window == 500
    with pytest.raises(RuleError, match="at most 400"):
        read_query(body, max_window=400)
    grouping = read_groups(GroupsBody(query=[1.0], group_by="g", limit=10, group_size=3))
    assert grouping.ask.limit == 120  # four times what the groups can show
    with pytest.raises(RuleError, match="limit x group_size"):
        read_groups(GroupsBody(query=[1.0], group_by="g", limit=50, group_size=30))


def test_one_prefetch_under_no_query_or_a_fusion_is_its_own_query_with_both_filters() -> None:
    inner = {"must": [{"key": "a", "match": {"value": 1}}]}
    outer = {"must": [{"key": "b", "match": {"value": 2}}]}
    ask = read_query(_query(prefetch=[{"query": {"text": "lake", "model": "m"}, "limit": 50,
                                       "filter": inner}],
                            query={"fusion": "rrf"}, filter=outer, limit=3))
    assert (ask.text, ask.limit, ask.filter) == ("lake", 3, {"must": [outer, inner]})
    bare = read_query(_query(prefetch={"query": [0.5], "score_threshold": 0.2}))
    assert (bare.vector, bare.filter, bare.score_threshold) == ([0.5], None, 0.2)


def test_payload_changes_read_as_qdrant_sends_them_and_never_touch_the_envelope() -> None:
    set_ = read_payload_change("set", {"payload": {"a": 1}, "points": [1, "u"]})
    assert (set_.kind, set_.payload, set_.ids, set_.filter) == ("set", {"a": 1}, (1, "u"), None)
    deleted = read_payload_change("delete", {"keys": ["a"], "filter": {"must": []}})
    assert deleted.keys == ("a",) and deleted.ids is None and deleted.filter is not None
    for kind, body, field in (("set", {"payload": {"_embedshift": 1}, "points": [1]}, "payload"),
                              ("delete", {"keys": ["_embedshift.text"], "points": [1]},
                               "payload"),
                              ("set", {"payload": {"a": 1}, "key": "a.b", "points": [1]}, "key"),
                              ("set", {"payload": 3, "points": [1]}, "payload"),
                              ("delete", {"keys": ["a b"], "points": [1]}, "keys")):
        with pytest.raises(RuleError) as refused:
            read_payload_change(kind, body)
        assert refused.value.field == field


def test_hits_are_grouped_by_a_payload_value_best_first_within_the_sizes() -> None:
    hits = [Hit(id=n, score=1 - n / 10, payload={"c": c, "x": n})
            for n, c in enumerate(["a", "b", "a", "a", ["b", "c"], None])]
    grouping = read_groups(msgspec.convert({"query": [1.0], "group_by": "c", "group_size": 2,
                                            "limit": 2, "with_payload": ["x"]}, GroupsBody))
    groups = groups_of(hits, grouping, _version("cosine"))
    assert [(g["id"], [h["id"] for h in g["hits"]]) for g in groups] == [("a", [0, 2]),
                                                                          ("b", [1, 4])]
    assert groups[0]["hits"][0]["payload"] == {"x": 0}  # the selector still applies


def test_recommendations_average_their_examples_as_qdrant_does() -> None:
    examples = read_recommend({"positive": [1, [0.0, 2.0]], "negative": ["u"]})
    assert examples == Recommend([1, [0.0, 2.0]], ["u"])
    assert average_vector([[1.0, 0.0], [3.0, 2.0]], [[0.0, 1.0]]) == [4.0, 1.0]
    assert average_vector([[1.0, 3.0]], []) == [1.0, 3.0]
    for raw, field in (({"positive": []}, "query.recommend.positive"),
                       ({"positive": [1], "strategy": "best_score"},
                        "query.recommend.strategy"),
                       ({"positive": [True]}, "query.recommend.positive")):
        with pytest.raises(RuleError) as refused:
            read_recommend(raw)
        assert refused.value.field == field
    with pytest.raises(RuleError) as refused:
        read_groups(msgspec.convert({"query": [1.0], "group_by": "_embedshift.text"},
                                    GroupsBody))
    assert refused.value.field == "group_by"


@pytest.mark.parametrize("path", ["k", "meta.n", "a[]", "a[0].b", '"a b".c', "ключ", "x-y_1"])
def test_an_index_names_a_payload_path_qdrant_reads(path: str) -> None:
    assert read_index({"field_name": path, "field_schema": "keyword"}) == (path, "keyword")


@pytest.mark.parametrize("path", [":", "a b", "a..b", ".a", "a[x]", "\x00", "_embedshift.text"])
def test_a_path_qdrant_cannot_read_or_embedshifts_own_is_a_400_naming_the_field(
        path: str) -> None:
    with pytest.raises(RuleError) as refused:
        read_index({"field_name": path, "field_schema": "keyword"})
    assert refused.value.field == "field_name"
