"""gRPC messages read as Qdrant's REST bodies: presence as the protocol means it."""

from __future__ import annotations

from typing import Any

import pytest
from qdrant_client import grpc as pb
from qdrant_client.conversions.conversion import payload_to_grpc

from proxy.qdrant_grpc import translate as t


def _document(text: str, **options: Any) -> pb.VectorInput:
    return pb.VectorInput(document=pb.Document(text=text, model="m",
                                               options=payload_to_grpc(options)))


def _nearest(vector: pb.VectorInput) -> pb.Query:
    return pb.Query(nearest=vector)


DENSE = pb.VectorInput(dense=pb.DenseVector(data=[0.5, 0.25]))
SPARSE = pb.VectorInput(sparse=pb.SparseVector(indices=[3, 9], values=[1.0, 0.5]))
KEYWORD = pb.Filter(must=[pb.Condition(field=pb.FieldCondition(
    key="k", match=pb.Match(keyword="v")))])
SHAPES = {
    "document": pb.QueryPoints(collection_name="c", query=_nearest(_document("q")), limit=3),
    "options": pb.QueryPoints(collection_name="c", query=_nearest(_document("q", user_id="u"))),
    "dense, unnamed": pb.QueryPoints(collection_name="c", query=_nearest(DENSE), using=""),
    "sparse, named": pb.QueryPoints(collection_name="c", query=_nearest(SPARSE), using="s"),
    "rrf": pb.QueryPoints(collection_name="c", query=pb.Query(fusion=pb.Fusion.RRF), prefetch=[
        pb.PrefetchQuery(query=_nearest(DENSE), using="", limit=5),
        pb.PrefetchQuery(query=_nearest(SPARSE), using="s", limit=5, filter=KEYWORD)],
        limit=2),
    "dbsf, nested": pb.QueryPoints(collection_name="c", query=pb.Query(fusion=pb.Fusion.DBSF),
                                   prefetch=[pb.PrefetchQuery(prefetch=[pb.PrefetchQuery(
                                       query=_nearest(DENSE), limit=9)],
                                       query=_nearest(SPARSE), using="s", limit=5)]),
    "paging and selectors": pb.QueryPoints(
        collection_name="c", query=_nearest(_document("q")), limit=4, offset=2,
        score_threshold=0.25, filter=KEYWORD,
        with_payload=pb.WithPayloadSelector(include=pb.PayloadIncludeSelector(fields=["a"])),
        with_vectors=pb.WithVectorsSelector(enable=True)),
    "excluded payload": pb.QueryPoints(
        collection_name="c", query=_nearest(DENSE),
        with_payload=pb.WithPayloadSelector(exclude=pb.PayloadExcludeSelector(fields=["b"]))),
    "no query": pb.QueryPoints(collection_name="c", limit=10),
}


@pytest.mark.parametrize("shape", SHAPES)
def test_the_quick_reading_gives_the_converters_body(shape: str) -> None:
    message = SHAPES[shape]
    assert t.quick_query(message) == t.slow_query(message)


def test_presence_is_read_as_the_protocol_means_it() -> None:
    """``using = ""`` is the unnamed vector, RRF is enum 0, an unset limit is REST's default."""
    assert t.query(SHAPES["dense, unnamed"])["using"] == ""
    assert "using" not in t.query(SHAPES["document"])
    assert t.query(SHAPES["rrf"])["query"] == {"fusion": "rrf"}
    assert "limit" not in t.query(SHAPES["options"])


def test_shapes_it_does_not_read_go_to_the_converter() -> None:
    recommend = pb.QueryPoints(collection_name="c", query=pb.Query(recommend=pb.RecommendInput(
        positive=[pb.VectorInput(id=pb.PointId(num=1))])))
    assert t.quick_query(recommend) is None
    assert t.query(recommend) == {"query": {"recommend": {"positive": [1], "negative": []}}}


def test_a_grouped_query_reads_its_shared_fields_as_a_query() -> None:
    grouped = pb.QueryPointGroups(collection_name="c", query=_nearest(_document("q")),
                                  using="", group_by="k", group_size=2, limit=3)
    assert t.query_groups(grouped) == {
        "query": {"nearest": {"text": "q", "model": "m", "options": {}}}, "using": "",
        "limit": 3, "group_by": "k", "group_size": 2}


def test_answers_are_built_as_the_clients_read_them() -> None:
    answer = t.query_answer({"points": [
        {"id": 7, "version": 0, "score": 0.5, "payload": {"a": [1, {"b": None}]}},
        {"id": "c0a96bba-d8b3-5649-b6ea-53fd654a23c9", "version": 0, "score": 0.25,
         "payload": {}}]}, 0.001)
    assert [p.id.num for p in answer.result[:1]] == [7]
    assert answer.result[1].id.uuid == "c0a96bba-d8b3-5649-b6ea-53fd654a23c9"
    assert answer.result[0].payload["a"].list_value.values[1].struct_value.fields[
        "b"].HasField("null_value")
