"""Qdrant's gRPC messages to its REST bodies and back: pure translation, no decision.

A request becomes the JSON body Qdrant's REST API takes for the same call (qdrant-client's own
converters, ``GrpcToRest``), so the REST edge's handlers read it; their answer, REST's
``result``, becomes the gRPC response (``RestToGrpc``). Presence is read as the protocol means
it: ``using = ""`` is the unnamed vector, ``fusion = RRF`` is enum 0, so optional fields are
tested with ``HasField``, never by truthiness.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from google.protobuf.message import Message
from qdrant_client import grpc as pb
from qdrant_client.conversions.conversion import (
    GrpcToRest,
    RestToGrpc,
    grpc_to_payload,
    payload_to_grpc,
)
from qdrant_client.http import models as rest

Body = Callable[[Any], dict[str, Any]]
Answer = Callable[[Any, float], Message]

FIELD_TYPES = {pb.FieldTypeKeyword: "keyword", pb.FieldTypeInteger: "integer",
               pb.FieldTypeFloat: "float", pb.FieldTypeGeo: "geo", pb.FieldTypeText: "text",
               pb.FieldTypeBool: "bool", pb.FieldTypeDatetime: "datetime",
               pb.FieldTypeUuid: "uuid"}


def _json(model: Any) -> Any:
    """A REST model as the JSON Qdrant's REST API takes: unset (None) fields left out."""
    if isinstance(model, list):
        return [_json(item) for item in model]
    if isinstance(model, dict):
        return {key: _json(value) for key, value in model.items()}
    if hasattr(model, "model_dump"):
        return model.model_dump(mode="json", exclude_none=True, by_alias=True)
    return model


def _some(body: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in body.items() if value is not None}


def _optional(message: Message, name: str, convert: Callable[[Any], Any] | None = None) -> Any:
    if not message.HasField(name):
        return None
    value = getattr(message, name)
    return _json(convert(value)) if convert is not None else value


def _point_id(point: pb.PointId) -> int | str:
    return point.num if point.WhichOneof("point_id_options") == "num" else point.uuid


def _selector(selector: pb.PointsSelector) -> dict[str, Any]:
    """``points`` or ``filter``, as REST's selector bodies spell them."""
    if selector.WhichOneof("points_selector_one_of") == "filter":
        return {"filter": _json(GrpcToRest.convert_filter(selector.filter))}
    return {"points": [_point_id(p) for p in selector.points.ids]}


def _reads(message: Message) -> dict[str, Any]:
    """``with_payload`` and ``with_vector``, where given."""
    return _some({
        "with_payload": _optional(message, "with_payload",
                                  GrpcToRest.convert_with_payload_selector),
        "with_vector": _optional(message, "with_vectors",
                                 GrpcToRest.convert_with_vectors_selector)})


# -- requests ---------------------------------------------------------------------------------

def nothing(message: Message) -> dict[str, Any]:
    return {}


def query(message: pb.QueryPoints) -> dict[str, Any]:
    """A query as REST's body: the shapes applications send read directly, anything else by
    qdrant-client's converter (the same body either way, tested)."""
    fast = quick_query(message)
    return fast if fast is not None else slow_query(message)


def slow_query(message: pb.QueryPoints | pb.PrefetchQuery) -> dict[str, Any]:
    if isinstance(message, pb.PrefetchQuery):
        return _json(GrpcToRest.convert_prefetch_query(message))  # type: ignore[no-any-return]
    return _json(GrpcToRest.convert_query_points(message))  # type: ignore[no-any-return]


_QUICK = frozenset({"collection_name", "prefetch", "query", "using", "filter", "limit",
                    "offset", "score_threshold", "with_payload", "with_vectors"})
"""The fields ``quick_query`` reads; a query with any other is read by the converter."""


def quick_query(message: pb.QueryPoints | pb.PrefetchQuery) -> dict[str, Any] | None:
    """The common shapes (a nearest vector or Document, a fusion, prefetches of them, a filter,
    paging, payload and vector selectors) without building qdrant-client's REST models; None
    for anything else."""
    body: dict[str, Any] = {}
    for field, value in message.ListFields():
        name = field.name
        if name not in _QUICK:
            return None
        if name == "query":
            read = _quick_stage(value)
            if read is None:
                return None
            body["query"] = read
        elif name == "prefetch":
            stages = [quick_query(each) for each in value]
            if any(stage is None for stage in stages):
                return None
            body["prefetch"] = stages
        elif name == "filter":
            body["filter"] = _json(GrpcToRest.convert_filter(value))
        elif name == "with_payload":
            body["with_payload"] = _json(GrpcToRest.convert_with_payload_selector(value))
        elif name == "with_vectors":
            body["with_vector"] = _json(GrpcToRest.convert_with_vectors_selector(value))
        elif name != "collection_name":
            body[name] = value
    if "using" not in body and message.HasField("using"):
        body["using"] = ""  # present, and empty: the unnamed vector
    return body


def _quick_stage(query: pb.Query) -> Any:
    kind = query.WhichOneof("variant")
    if kind == "fusion":
        return {"fusion": "rrf" if query.fusion == pb.Fusion.RRF else "dbsf"}
    if kind != "nearest":
        return None
    vector = query.nearest
    which = vector.WhichOneof("variant")
    if which == "document":
        document = vector.document
        return {"nearest": {"text": document.text, "model": document.model,
                            "options": grpc_to_payload(document.options)}}
    if which == "dense":
        return {"nearest": list(vector.dense.data)}
    if which == "sparse":
        return {"nearest": {"indices": list(vector.sparse.indices),
                            "values": list(vector.sparse.values)}}
    return None


def query_batch(message: pb.QueryBatchPoints) -> dict[str, Any]:
    return {"searches": [query(each) for each in message.query_points]}


_SHARED = ("query", "using", "filter", "params", "score_threshold", "with_payload",
           "with_vectors", "lookup_from", "limit")


def query_groups(message: pb.QueryPointGroups) -> dict[str, Any]:
    """The fields a grouped query shares with ``QueryPoints`` read as one, the grouping beside
    them (qdrant-client has no converter for the whole message)."""
    shared = pb.QueryPoints(collection_name=message.collection_name)
    shared.prefetch.extend(message.prefetch)
    for name in _SHARED:
        if message.HasField(name):  # type: ignore[arg-type]
            value = getattr(message, name)
            if isinstance(value, Message):
                getattr(shared, name).CopyFrom(value)
            else:
                setattr(shared, name, value)
    return _some({**query(shared), "group_by": message.group_by,
                  "group_size": _optional(message, "group_size"),
                  "with_lookup": _optional(message, "with_lookup",
                                           GrpcToRest.convert_with_lookup)})


def search(message: pb.SearchPoints) -> dict[str, Any]:
    """The legacy search: a dense vector, named or not, or a sparse one (``sparse_indices``)."""
    values = list(message.vector)
    name = message.vector_name if message.HasField("vector_name") else None
    vector: Any = values
    if message.HasField("sparse_indices"):
        vector = {"name": name or "", "vector": {"indices": list(message.sparse_indices.data),
                                                 "values": values}}
    elif name:
        vector = {"name": name, "vector": values}
    return _some({
        "vector": vector, "limit": message.limit,
        "filter": _optional(message, "filter", GrpcToRest.convert_filter),
        "params": _optional(message, "params", GrpcToRest.convert_search_params),
        "score_threshold": _optional(message, "score_threshold"),
        "offset": _optional(message, "offset"), **_reads(message)})


def search_batch(message: pb.SearchBatchPoints) -> dict[str, Any]:
    return {"searches": [search(each) for each in message.search_points]}


def recommend(message: pb.RecommendPoints) -> dict[str, Any]:
    def examples(ids: Any, vectors: Any) -> list[Any]:
        return [*(_point_id(p) for p in ids), *(list(v.data) for v in vectors)]

    strategy = _optional(message, "strategy", GrpcToRest.convert_recommend_strategy)
    return _some({
        "positive": examples(message.positive, message.positive_vectors),
        "negative": examples(message.negative, message.negative_vectors),
        "strategy": strategy, "limit": message.limit,
        "using": _optional(message, "using"),
        "filter": _optional(message, "filter", GrpcToRest.convert_filter),
        "score_threshold": _optional(message, "score_threshold"),
        "offset": _optional(message, "offset"), **_reads(message)})


def upsert(message: pb.UpsertPoints) -> dict[str, Any]:
    return {"points": [_json(GrpcToRest.convert_point_struct(p)) for p in message.points]}


def get(message: pb.GetPoints) -> dict[str, Any]:
    return {"ids": [_point_id(p) for p in message.ids], **_reads(message)}


def scroll(message: pb.ScrollPoints) -> dict[str, Any]:
    return _some({
        "filter": _optional(message, "filter", GrpcToRest.convert_filter),
        "offset": _point_id(message.offset) if message.HasField("offset") else None,
        "limit": _optional(message, "limit"),
        "order_by": _optional(message, "order_by", GrpcToRest.convert_order_by),
        **_reads(message)})


def count(message: pb.CountPoints) -> dict[str, Any]:
    return _some({"filter": _optional(message, "filter", GrpcToRest.convert_filter),
                  "exact": _optional(message, "exact")})


def delete(message: pb.DeletePoints) -> dict[str, Any]:
    return _selector(message.points)


def set_payload(message: pb.SetPayloadPoints) -> dict[str, Any]:
    where = _selector(message.points_selector) if message.HasField("points_selector") else {}
    return _some({"payload": GrpcToRest.convert_payload(message.payload),
                  "key": _optional(message, "key"), **where})


def delete_payload(message: pb.DeletePayloadPoints) -> dict[str, Any]:
    where = _selector(message.points_selector) if message.HasField("points_selector") else {}
    return {"keys": list(message.keys), **where}


def clear_payload(message: pb.ClearPayloadPoints) -> dict[str, Any]:
    return _selector(message.points)


def create_index(message: pb.CreateFieldIndexCollection) -> dict[str, Any]:
    return _some({"field_name": message.field_name,
                  "field_schema": FIELD_TYPES.get(message.field_type)
                  if message.HasField("field_type") else None})


def create_collection(message: pb.CreateCollection) -> dict[str, Any]:
    sparse = {name: _json(GrpcToRest.convert_sparse_vector_params(params))
              for name, params in message.sparse_vectors_config.map.items()} \
        if message.HasField("sparse_vectors_config") else None
    return _some({"vectors": _optional(message, "vectors_config",
                                       GrpcToRest.convert_vectors_config),
                  "sparse_vectors": sparse})


# -- answers ----------------------------------------------------------------------------------

def _id_args(value: int | str) -> dict[str, Any]:
    return {"num": value} if isinstance(value, int) else {"uuid": value}


def scored(point: dict[str, Any]) -> Any:
    """A hit, as the arguments of a ``ScoredPoint`` (protobuf builds it from them faster than
    from messages); through the REST model only when it carries vectors."""
    if point.get("vector") is not None:
        return RestToGrpc.convert_scored_point(rest.ScoredPoint.model_validate(point))
    return {"id": _id_args(point["id"]), "score": point["score"],
            "version": point.get("version", 0),
            "payload": payload_to_grpc(point.get("payload") or {})}


def _record(point: dict[str, Any]) -> Any:
    if point.get("vector") is not None:
        return RestToGrpc.convert_record(rest.Record.model_validate(point))
    return {"id": _id_args(point["id"]), "payload": payload_to_grpc(point.get("payload") or {})}


def _done() -> pb.UpdateResult:
    return pb.UpdateResult(operation_id=0, status=pb.UpdateStatus.Completed)


def query_answer(result: Any, time: float) -> Message:
    return pb.QueryResponse(result=[scored(p) for p in result["points"]], time=time)


def query_batch_answer(result: Any, time: float) -> Message:
    return pb.QueryBatchResponse(result=[
        pb.BatchResult(result=[scored(p) for p in each["points"]]) for each in result],
        time=time)


def groups_answer(result: Any, time: float) -> Message:
    return pb.QueryGroupsResponse(result=RestToGrpc.convert_groups_result(
        rest.GroupsResult.model_validate(result)), time=time)


def search_answer(result: Any, time: float) -> Message:
    return pb.SearchResponse(result=[scored(p) for p in result], time=time)


def search_batch_answer(result: Any, time: float) -> Message:
    return pb.SearchBatchResponse(result=[
        pb.BatchResult(result=[scored(p) for p in each]) for each in result], time=time)


def recommend_answer(result: Any, time: float) -> Message:
    return pb.RecommendResponse(result=[scored(p) for p in result], time=time)


def done_answer(result: Any, time: float) -> Message:
    return pb.PointsOperationResponse(result=_done(), time=time)


def get_answer(result: Any, time: float) -> Message:
    return pb.GetResponse(result=[_record(p) for p in result], time=time)


def scroll_answer(result: Any, time: float) -> Message:
    after = result.get("next_page_offset")
    return pb.ScrollResponse(result=[_record(p) for p in result["points"]], time=time,
                             next_page_offset=None if after is None
                             else RestToGrpc.convert_extended_point_id(after))


def count_answer(result: Any, time: float) -> Message:
    return pb.CountResponse(result=pb.CountResult(count=result["count"]), time=time)


def collections_answer(result: Any, time: float) -> Message:
    return pb.ListCollectionsResponse(collections=[
        pb.CollectionDescription(name=c["name"]) for c in result["collections"]], time=time)


def collection_answer(result: Any, time: float) -> Message:
    return pb.GetCollectionInfoResponse(result=RestToGrpc.convert_collection_info(
        rest.CollectionInfo.model_validate(result)), time=time)


def exists_answer(result: Any, time: float) -> Message:
    return pb.CollectionExistsResponse(result=pb.CollectionExists(exists=result["exists"]),
                                       time=time)


def changed_answer(result: Any, time: float) -> Message:
    return pb.CollectionOperationResponse(result=bool(result), time=time)


def aliases_answer(result: Any, time: float) -> Message:
    return pb.ListAliasesResponse(aliases=[
        pb.AliasDescription(alias_name=a["alias_name"], collection_name=a["collection_name"])
        for a in result["aliases"]], time=time)
