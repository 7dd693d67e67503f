"""Qdrant's request and answer shapes, read and written without I/O.

A query arrives as Qdrant's ``points/query`` body. Text comes as a ``Document`` (``{"text",
"model"}``, under ``nearest`` or bare) or an ``InferenceObject`` whose object is a string; the
model named there may be any string and never picks a version (routing does). A list of numbers is
a raw vector. Anything else Qdrant accepts (a point id, recommend, fusion, ...) is refused with a
400 naming it. Answers are ``{"result": ..., "status": "ok", "time": seconds}``; errors
``{"status": {"error": message}, "time": seconds}``, as Qdrant answers them.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping
from types import MappingProxyType
from typing import Annotated, Any, NamedTuple

import msgspec

from proxy.ingest.writer import PayloadChange
from proxy.vectors.base import (
    INDEX_SCHEMAS,
    Fusion,
    Hit,
    Named,
    Nearest,
    Sparse,
    Stage,
    Text,
    VectorsConfig,
    id_key,
    parse_filter,
)
from rollout_rules.errors import RuleError
from rollout_rules.model import Rollout, Version

QDRANT_VERSION = "1.20.0"
"""The Qdrant REST API this edge speaks; clients warn unless within one minor of their own."""
MAX_WINDOW = 1000
"""limit + offset: the deepest page a query may ask for, unless ``max_limit`` says otherwise
(reranking pipelines fetch 100-1,000 candidates; Qdrant sets no bound)."""
GROUP_DEPTH = 100
"""How deep a grouped query searches for its groups' hits, at the least."""
RESERVED = "_embedshift"
DISTANCES = {"cosine": "Cosine", "dot": "Dot", "euclid": "Euclid", "manhattan": "Manhattan"}


class QueryBody(msgspec.Struct, frozen=True, kw_only=True):
    """The fields of Qdrant's ``QueryRequest`` this edge reads; the rest are refused by name."""

    query: Any = None
    prefetch: Any = None
    using: str | None = None
    filter: dict[str, Any] | None = None
    params: dict[str, Any] | None = None
    score_threshold: float | None = None
    limit: Annotated[int, msgspec.Meta(ge=1)] = 10
    offset: Annotated[int, msgspec.Meta(ge=0)] | None = None
    with_vector: Any = None
    with_payload: Any = None
    lookup_from: Any = None
    shard_key: Any = None


class SearchBody(msgspec.Struct, frozen=True, kw_only=True):
    """Qdrant's legacy ``points/search``: a raw vector."""

    vector: Any
    filter: dict[str, Any] | None = None
    params: dict[str, Any] | None = None
    limit: Annotated[int, msgspec.Meta(ge=1)] = 10
    offset: Annotated[int, msgspec.Meta(ge=0)] | None = None
    with_payload: Any = None
    with_vector: Any = None
    score_threshold: float | None = None
    shard_key: Any = None


class QueryBatch(msgspec.Struct, frozen=True, kw_only=True):
    searches: list[QueryBody]


class SearchBatch(msgspec.Struct, frozen=True, kw_only=True):
    searches: list[SearchBody]


class Selector(NamedTuple):
    """Which payload keys a hit carries: all (``include`` None), some, or all but some."""

    wanted: bool
    include: frozenset[str] | None = None
    exclude: frozenset[str] = frozenset()


class Recommend(NamedTuple):
    positive: list[int | str | list[float]]
    negative: list[int | str | list[float]]


class Ask(NamedTuple):
    """One query, read: text or a raw vector, and how to page, cut and shape its hits."""

    text: str | None
    vector: list[float] | None
    filter: dict[str, Any] | None
    limit: int
    offset: int
    score_threshold: float | None
    payload: Selector
    recommend: Recommend | None = None  # examples to recommend from, instead of text or vector
    with_vector: bool = False
    stage: Stage | None = None  # a staged query (prefetches, fusion, named or sparse vectors)

    @property
    def window(self) -> int:
        return self.limit + self.offset


def read_query(body: QueryBody, max_window: int = MAX_WINDOW) -> Ask:
    """The query, read: text or one vector; or, when it names vectors, prefetches several or
    fuses them, a ``Stage`` (the request path checks its names against the collection or the
    alias's rule)."""
    try:
        return _read_query(body, max_window)
    except RuleError as refused:
        if refused.field not in ("using", "prefetch", "query") and \
                not refused.field.startswith("prefetch."):
            raise
        try:
            stage = read_stage(body, max_window)
        except RuleError:
            raise refused from None  # neither: what an alias cannot serve names it best
        return _ask(None, None, body, max_window)._replace(stage=stage)


def _read_query(body: QueryBody, max_window: int) -> Ask:
    for name in ("lookup_from", "shard_key"):
        if getattr(body, name) is not None:
            raise RuleError(name, "is not supported through embedshift: send the query text "
                                  "as a Document in `query`")
    if body.prefetch is not None:
        body = _through_prefetch(body)
    if isinstance(body.query, dict) and set(body.query) == {"recommend"}:
        return _ask(None, None, body, max_window)._replace(
            recommend=read_recommend(body.query["recommend"]))
    if body.using not in (None, ""):
        raise RuleError("using", "an alias has one vector, the unnamed one: leave `using` out")
    text, vector = _query_of(body.query)
    return _ask(text, vector, body, max_window)


def _through_prefetch(body: QueryBody) -> QueryBody:
    """One prefetch, under no query or a fusion of it alone, is its own query: an alias has one
    vector, so there is nothing to fuse it with. Its filter and the outer one both apply."""
    prefetch = body.prefetch
    if isinstance(prefetch, list) and len(prefetch) == 1:
        prefetch = prefetch[0]
    if not isinstance(prefetch, dict):
        raise RuleError("prefetch", "one prefetch is served (an alias has one vector: there "
                                    "is nothing to fuse it with)")
    unknown = set(prefetch) - {"query", "filter", "limit", "score_threshold", "using", "params"}
    if unknown:
        raise RuleError(f"prefetch.{sorted(unknown)[0]}", "is not served through embedshift")
    outer = body.query
    if outer is not None and not (isinstance(outer, dict) and set(outer) == {"fusion"}):
        raise RuleError("query", "over a prefetch only a fusion is served: put the text in the "
                                 "prefetch's query, or drop the prefetch")
    filters = [f for f in (body.filter, prefetch.get("filter")) if f is not None]
    threshold = body.score_threshold if body.score_threshold is not None else \
        prefetch.get("score_threshold")
    return msgspec.structs.replace(
        body, prefetch=None, query=prefetch.get("query"),
        using=prefetch.get("using") or body.using,
        filter=filters[0] if len(filters) == 1 else ({"must": filters} if filters else None),
        score_threshold=threshold)


FUSIONS = ("rrf", "dbsf")
PREFETCH_FIELDS = frozenset({"query", "prefetch", "filter", "limit", "score_threshold", "using",
                             "params", "lookup_from"})


def read_stage(body: QueryBody, max_window: int = MAX_WINDOW) -> Stage:
    """A query as the engine runs it: any number of prefetches, nested, each the nearest of a
    dense or sparse vector by name, fused with RRF (``{"fusion": "rrf"}`` or ``{"rrf": {k,
    weights}}``) or DBSF; RuleError naming the field of what is not served."""
    if body.lookup_from is not None or body.shard_key is not None:
        raise RuleError("lookup_from" if body.lookup_from is not None else "shard_key",
                        "is not supported through embedshift")
    return _stage({"query": body.query, "prefetch": body.prefetch, "using": body.using,
                   "filter": body.filter, "score_threshold": body.score_threshold,
                   "limit": body.limit + (body.offset or 0)}, "", max_window)


def _stage(raw: dict[str, Any], where: str, max_window: int) -> Stage:
    unknown = set(raw) - PREFETCH_FIELDS
    if unknown:
        raise RuleError(f"{where}{sorted(unknown)[0]}", "is not served through embedshift")
    if raw.get("lookup_from") is not None:
        raise RuleError(f"{where}lookup_from", "is not supported through embedshift")
    limit = raw.get("limit", 10) if raw.get("limit") is not None else 10
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= max_window:
        raise RuleError(f"{where}limit", f"must be an integer from 1 to {max_window}")
    listed = raw.get("prefetch")
    if isinstance(listed, dict):
        listed = [listed]
    if listed is not None and not (isinstance(listed, list) and
                                   all(isinstance(p, dict) for p in listed)):
        raise RuleError(f"{where}prefetch", "must be a prefetch or a list of them")
    prefetch = tuple(_stage(p, f"{where}prefetch[{n}].", max_window)
                     for n, p in enumerate(listed or []))
    threshold = raw.get("score_threshold")
    if threshold is not None and (isinstance(threshold, bool) or
                                  not isinstance(threshold, int | float)):
        raise RuleError(f"{where}score_threshold", "must be a number")
    using = raw.get("using")
    if using is not None and not isinstance(using, str):
        raise RuleError(f"{where}using", "must name a vector")
    query = raw.get("query")
    if query is None and len(prefetch) == 1 and using is None:
        query_of: Nearest | Fusion = prefetch[0].query  # one prefetch, as its own query
        prefetch = prefetch[0].prefetch
    else:
        query_of = _stage_query(query, using or "", f"{where}query", bool(prefetch))
    return Stage(query_of, limit, prefetch, parse_filter(raw.get("filter")),
                 None if threshold is None else float(threshold))


def _stage_query(query: Any, using: str, where: str, fused: bool) -> Nearest | Fusion:
    if isinstance(query, dict) and set(query) == {"fusion"}:
        if query["fusion"] not in FUSIONS:
            raise RuleError(f"{where}.fusion", f"must be one of {', '.join(FUSIONS)}")
        if not fused:
            raise RuleError(where, "a fusion fuses prefetches: give them")
        return Fusion(query["fusion"])
    if isinstance(query, dict) and set(query) == {"rrf"}:
        if not fused:
            raise RuleError(where, "a fusion fuses prefetches: give them")
        return _rrf(query["rrf"], f"{where}.rrf")
    if isinstance(query, dict) and set(query) == {"nearest"}:
        query = query["nearest"]
    if query is None:
        raise RuleError(where, "a query is needed: a vector, or a fusion of prefetches")
    if isinstance(query, dict) and ("text" in query or "object" in query):
        text, _ = _query_of(query)  # a Document: the version that answers encodes it
        return Nearest(using, Text(text or ""))
    return Nearest(using, named_vector(query, where))


def _rrf(raw: Any, where: str) -> Fusion:
    if not isinstance(raw, dict) or set(raw) - {"k", "weights"}:
        raise RuleError(where, "must be {\"k\": n, \"weights\": [...]}")
    k, weights = raw.get("k"), raw.get("weights")
    if k is not None and (isinstance(k, bool) or not isinstance(k, int) or k < 1):
        raise RuleError(f"{where}.k", "must be a positive integer")
    if weights is not None:
        weights = _numbers(weights, f"{where}.weights")
    return Fusion("rrf", k, weights)


def named_vector(value: Any, where: str) -> Named:
    """A dense vector (a list of numbers) or a sparse one (``{indices, values}``)."""
    if isinstance(value, dict) and ("text" in value or "object" in value):
        raise RuleError(where, "a Document under a vector's name is not encoded here: send "
                               "the vector")
    if isinstance(value, dict):
        indices, values = value.get("indices"), value.get("values")
        if set(value) != {"indices", "values"} or not isinstance(indices, list) or \
                not isinstance(values, list) or len(indices) != len(values) or not all(
                    isinstance(i, int) and not isinstance(i, bool) and 0 <= i < 2**32
                    for i in indices):
            raise RuleError(where, "a sparse vector is {\"indices\": [unsigned integers], "
                                   "\"values\": [numbers]} of one length")
        if len(set(indices)) != len(indices):
            raise RuleError(f"{where}.indices", "must not repeat an index")
        return Sparse(list(indices), _numbers(values, f"{where}.values") if values else [])
    return _numbers(value, where)


def stage_vectors(stage: Stage) -> list[tuple[str, Named | Text]]:
    """Every (vector name, vector) a staged query searches by."""
    found = [] if not isinstance(stage.query, Nearest) else [(stage.query.using,
                                                              stage.query.vector)]
    for inner in stage.prefetch:
        found.extend(stage_vectors(inner))
    return found


def read_search(body: SearchBody, max_window: int = MAX_WINDOW) -> Ask:
    if body.shard_key is not None:
        raise RuleError("shard_key", "is not supported through embedshift")
    vector = body.vector
    if isinstance(vector, dict):  # a named vector: {"name": ..., "vector": [...] | sparse}
        name = vector.get("name") or ""
        if not isinstance(name, str):
            raise RuleError("vector.name", "must name a vector")
        vector = vector.get("vector")
        if name or isinstance(vector, dict):  # served in the application's own collection
            ask = _ask(None, None, body, max_window)
            return ask._replace(stage=Stage(
                Nearest(name, named_vector(vector, "vector.vector")), ask.window,
                filter=parse_filter(body.filter), score_threshold=body.score_threshold))
    return _ask(None, _numbers(vector, "vector"), body, max_window)


def _ask(text: str | None, vector: list[float] | None, body: QueryBody | SearchBody,
         max_window: int) -> Ask:
    if body.limit + (body.offset or 0) > max_window:
        raise RuleError("limit", f"limit + offset may be at most {max_window} (max_limit)")
    return Ask(text, vector, body.filter, body.limit, body.offset or 0, body.score_threshold,
               read_selector(body.with_payload), with_vector=wants_vector(body.with_vector))


def wants_vector(with_vector: Any) -> bool:
    """Qdrant's ``with_vector``: true, false, or the names wanted (only the unnamed one here).
    A vector returned is in the space of the version that answered (the answer's header)."""
    if with_vector is None or isinstance(with_vector, bool):
        return bool(with_vector)
    if isinstance(with_vector, list) and set(with_vector) <= {""}:
        return bool(with_vector)
    raise RuleError("with_vector", "an alias has one vector, the unnamed one: true or false")


def _query_of(query: Any) -> tuple[str | None, list[float] | None]:
    """Text or a vector from a ``query``, as Qdrant's clients send them."""
    if isinstance(query, dict) and set(query) == {"nearest"}:
        query = query["nearest"]
    if isinstance(query, dict) and "text" in query:  # a Document (bare or under nearest)
        text = query["text"]
        if not isinstance(text, str):
            raise RuleError("query.text", "must be a string")
        return text, None
    if isinstance(query, dict) and "object" in query:  # an InferenceObject
        if not isinstance(query["object"], str):
            raise RuleError("query.object", "only text can be encoded here")
        return query["object"], None
    if isinstance(query, list):
        return None, _numbers(query, "query")
    if query is None:
        raise RuleError("query", "a query is needed: the text as a Document "
                                 "({\"text\": ..., \"model\": ...}) or a vector")
    if isinstance(query, str | int):
        raise RuleError("query", "querying by point id is not supported through embedshift: "
                                 "send the text as a Document")
    kind = next(iter(query)) if isinstance(query, dict) and query else type(query).__name__
    raise RuleError("query", f"a {kind!s} query is not supported through embedshift: send the "
                             "text as a Document, or a vector")


def _numbers(value: Any, field: str) -> list[float]:
    if (not isinstance(value, list) or not value
            or not all(isinstance(x, int | float) and not isinstance(x, bool) for x in value)):
        raise RuleError(field, "must be a dense vector: a list of numbers")
    return [float(x) for x in value]


def read_selector(with_payload: Any) -> Selector:
    """Qdrant's ``with_payload``: a bool, a list of keys, or ``{"include"|"exclude": keys}``.
    Naming embedshift's own keys is refused, as in filters: hits never carry them."""
    if with_payload is None or with_payload is True:
        return Selector(True)
    if with_payload is False:
        return Selector(False)
    if isinstance(with_payload, list):
        return Selector(True, include=_keys(with_payload, "with_payload"))
    if isinstance(with_payload, dict) and len(with_payload) == 1:
        (kind, keys), = with_payload.items()
        if kind == "include":
            return Selector(True, include=_keys(keys, "with_payload.include"))
        if kind == "exclude":
            return Selector(True, exclude=_keys(keys, "with_payload.exclude"))
    raise RuleError("with_payload", "must be true, false, a list of keys, or "
                                    "{\"include\": [...]} or {\"exclude\": [...]}")


def _keys(keys: Any, field: str) -> frozenset[str]:
    if not isinstance(keys, list) or not all(isinstance(key, str) for key in keys):
        raise RuleError(field, "must be a list of payload keys")
    for key in keys:
        if key.replace('"', "").split(".", 1)[0].split("[", 1)[0] == RESERVED:
            raise RuleError(field, f"{RESERVED} is embedshift's own and cannot be selected")
    return frozenset(keys)


def wants_payload(ask: Ask) -> bool:
    return ask.payload.wanted


def scored_points(hits: list[Hit], ask: Ask, version: Version,
                  vectors: dict[Any, Any] | None = None) -> list[dict[str, Any]]:
    """The page of hits a query asked for, as Qdrant's ``ScoredPoint``s (with their vectors
    from ``vectors`` by id, when asked)."""
    page = hits[ask.offset:ask.window]
    if ask.score_threshold is not None:
        lower_is_better = version.metric in ("euclid", "manhattan")
        page = [hit for hit in page if (hit.score <= ask.score_threshold if lower_is_better
                                        else hit.score >= ask.score_threshold)]
    found = vectors or {}
    return [{"id": hit.id, "version": 0, "score": hit.score,
             "payload": _select(hit.payload, ask.payload),
             "vector": found.get(id_key(hit.id))} for hit in page]


def _select(payload: dict[str, Any] | None, selector: Selector) -> dict[str, Any] | None:
    if not selector.wanted:
        return None
    payload = payload or {}
    if selector.include is not None:
        return {key: value for key, value in payload.items() if key in selector.include}
    return {key: value for key, value in payload.items() if key not in selector.exclude}


def answer(result: Any, took_s: float) -> dict[str, Any]:
    return {"result": result, "status": "ok", "time": took_s}


def error(message: str, took_s: float = 0.0) -> dict[str, Any]:
    return {"status": {"error": message}, "time": took_s}


def collection_info(version: Version, points: int, rollout: Rollout | None = None
                    ) -> dict[str, Any]:
    """Qdrant's ``CollectionInfo`` for an alias, as the version serving the caller sees it:
    its vector at the version's size and distance (one unnamed vector; or, when the rule names
    it or carries others, a map of them under the application's names, sparse ones apart)."""
    info = _info(points)
    own = {"size": version.dimensions, "distance": DISTANCES[version.metric]}
    if rollout is None or not (rollout.vector or rollout.carried):
        info["config"]["params"]["vectors"] = own
        return info
    info["config"]["params"]["vectors"] = {rollout.vector: own, **{
        name: {"size": c.size, "distance": DISTANCES[c.metric]}
        for name, c in rollout.carried.items() if not c.sparse}}
    sparse = {name: {"modifier": c.modifier} if c.modifier else {}
              for name, c in rollout.carried.items() if c.sparse}
    if sparse:
        info["config"]["params"]["sparse_vectors"] = sparse
    return info


def _info(points: int) -> dict[str, Any]:
    return {
        "status": "green", "optimizer_status": "ok", "segments_count": 1,
        "points_count": points, "indexed_vectors_count": points,
        "config": {
            "params": {"shard_number": 1, "replication_factor": 1,
                       "write_consistency_factor": 1, "on_disk_payload": True},
            "hnsw_config": {"m": 16, "ef_construct": 100, "full_scan_threshold": 10000},
            "optimizer_config": {"deleted_threshold": 0.2, "vacuum_min_vector_number": 1000,
                                 "default_segment_number": 0, "flush_interval_sec": 5},
            "wal_config": {"wal_capacity_mb": 32, "wal_segments_ahead": 0}},
        "payload_schema": {}}


NONE_NAMED: Mapping[str, Named] = MappingProxyType({})


class Incoming(NamedTuple):
    """An upserted point, read: text to encode (a Document) or the writer's own vector."""

    id: int | str
    text: str | None
    vector: list[float] | None
    payload: dict[str, Any]
    named: Mapping[str, Named] = NONE_NAMED  # vectors by name beside the unnamed one


def read_points(body: Any) -> list[Incoming]:
    """Qdrant's upsert body, ``{"points": [...]}`` or ``{"batch": {"ids", "vectors",
    "payloads"}}``, as points; RuleError naming the field of the first that cannot be read."""
    if not isinstance(body, dict):
        raise RuleError("body", "must be {\"points\": [...]} or {\"batch\": {...}}")
    if isinstance(body.get("points"), list):
        rows = [(f"points[{n}]", p.get("id"), p.get("vector"), p.get("payload"))
                if isinstance(p, dict) else (f"points[{n}]", None, None, None)
                for n, p in enumerate(body["points"])]
    elif isinstance(body.get("batch"), dict):
        batch = body["batch"]
        ids, vectors = batch.get("ids"), batch.get("vectors")
        payloads = batch.get("payloads") or [None] * len(ids or [])
        if not (isinstance(ids, list) and isinstance(vectors, list) and isinstance(payloads, list)
                and len(ids) == len(vectors) == len(payloads)):
            raise RuleError("batch", "needs ids, vectors (and payloads) of one length; named "
                                     "vectors are not served")
        rows = [(f"batch[{n}]", *row) for n, row in enumerate(
            zip(ids, vectors, payloads, strict=True))]
    else:
        raise RuleError("body", "must be {\"points\": [...]} or {\"batch\": {...}}")
    if not rows:
        raise RuleError("points", "no points")
    return [_point(*row) for row in rows]


def _point(where: str, point_id: Any, vector: Any, payload: Any) -> Incoming:
    if not is_point_id(point_id):
        raise RuleError(f"{where}.id", "must be an unsigned integer or a UUID string")
    point_id = canonical_id(point_id)
    if payload is None:
        payload = {}
    if not isinstance(payload, dict):
        raise RuleError(f"{where}.payload", "must be an object")
    if RESERVED in payload:
        raise RuleError(f"{where}.payload", f"{RESERVED} is embedshift's own")
    if isinstance(vector, dict) and "text" not in vector and "object" not in vector:
        if set(vector) != {""}:
            named = {name: named_vector(v, f"{where}.vector.{name}")
                     for name, v in vector.items() if name != ""}
            unnamed = vector.get("")
            return Incoming(point_id, None, None if unnamed is None else _numbers(
                unnamed, f"{where}.vector"), payload, named)
        vector = vector[""]
    if isinstance(vector, dict):
        text, _ = _query_of(vector)
        return Incoming(point_id, text, None, payload)
    return Incoming(point_id, None, _numbers(vector, f"{where}.vector"), payload)


MAX_ID = 2**63 - 1
"""The largest integer id (a document id's bound; Qdrant's is an unsigned 64-bit integer)."""
MAX_NAME = 255
"""A collection name's length at the most, as in Qdrant."""
_NOT_IN_NAMES = frozenset('<>:"/\\|?*')


_HYPHENATED = r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
UUID_SPELLINGS = re.compile(
    rf"[0-9a-fA-F]{{32}}|{_HYPHENATED}|\{{{_HYPHENATED}\}}|urn:uuid:{_HYPHENATED}")
"""The spellings of a UUID Qdrant accepts as a point id (its ``uuid`` crate's parser): 32 hex
digits, hyphenated, braced, or ``urn:uuid:``, in either case."""


def canonical_id(value: int | str) -> int | str:
    """A point id as this edge keeps and answers it: a UUID in any spelling Qdrant accepts
    becomes its canonical form (hyphenated, lower case, as Qdrant answers it), so every
    spelling of one id names one point; integers, and an alias's other string ids (documents'
    own), are as given."""
    if isinstance(value, str) and UUID_SPELLINGS.fullmatch(value):
        return str(uuid.UUID(value))
    return value


def is_uuid(value: Any) -> bool:
    """Whether ``value`` is a UUID in a spelling Qdrant accepts."""
    return isinstance(value, str) and UUID_SPELLINGS.fullmatch(value) is not None


def is_point_id(value: Any) -> bool:
    """An unsigned integer (within ``MAX_ID``) or a non-empty string of at most 256 characters
    (a UUID, or a document's own id, which its alias maps to a point id)."""
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return 0 <= value <= MAX_ID
    return isinstance(value, str) and 0 < len(value) <= 256


def point_ids(body: Any, field: str = "points") -> list[int | str]:
    """The ids of a delete (``{"points": [...]}``) or a retrieve (``{"ids": [...]}``)."""
    ids = body.get(field) if isinstance(body, dict) else None
    if not isinstance(ids, list) or not all(is_point_id(i) for i in ids):
        raise RuleError(field, "must be a list of point ids: unsigned integers or UUIDs")
    return [canonical_id(i) for i in ids]


def read_offset(value: Any) -> int | str | None:
    """A scroll's ``offset``: a point id (a page's ``next_page_offset``), or none."""
    if value is None:
        return None
    if not is_point_id(value):
        raise RuleError("offset", "must be a point id: an unsigned integer or a UUID")
    return canonical_id(value)


def check_name(name: str) -> None:
    """A collection name as Qdrant takes one: 1 to 255 characters, no control characters and
    none of ``< > : " / \\ | ? *``; RuleError naming ``name`` otherwise (never echoing it)."""
    if not 0 < len(name) <= MAX_NAME:
        raise RuleError("name", f"a collection name has 1 to {MAX_NAME} characters; this one "
                                f"has {len(name)}")
    if any(ord(c) < 32 or ord(c) == 127 or c in _NOT_IN_NAMES for c in name):
        raise RuleError("name", "a collection name holds no control characters and none of "
                                '< > : " / \\ | ? *')


def record(doc_id: Any, payload: dict[str, Any], selector: Selector,
           vector: list[float] | dict[str, Any] | None = None) -> dict[str, Any]:
    """A stored point as Qdrant's ``Record``: the id it was written with, the payload without
    embedshift's envelope."""
    user = {key: value for key, value in payload.items() if key != RESERVED}
    return {"id": doc_id, "payload": _select(user, selector), "vector": vector}


def updated(took_s: float) -> dict[str, Any]:
    return answer({"operation_id": 0, "status": "completed"}, took_s)


METRICS = {qdrant: ours for ours, qdrant in DISTANCES.items()}


def read_vectors_config(body: Any) -> VectorsConfig:
    """The vectors of ``PUT /collections/{name}``: one unnamed dense vector, or dense ones by
    name (``""`` a name too), and sparse ones by name (with the IDF modifier or none)."""
    vectors = body.get("vectors") if isinstance(body, dict) else None
    sparse = body.get("sparse_vectors") if isinstance(body, dict) else None
    if vectors is None and sparse is None:
        raise RuleError("vectors", "a collection needs vectors: {\"size\": n, \"distance\": "
                                   "...}, or named ones, or sparse_vectors")
    if vectors is not None and not isinstance(vectors, dict):
        raise RuleError("vectors", "must be {\"size\": n, \"distance\": ...} or a map of "
                                   "them by name")
    single = vectors is not None and "size" in vectors
    held = {"": vectors} if single else vectors or {}
    dense = {name: _dense_params(params, "vectors" if single else f"vectors.{name}")
             for name, params in held.items()}
    if sparse is not None and not isinstance(sparse, dict):
        raise RuleError("sparse_vectors", "must be a map of sparse vectors by name")
    return VectorsConfig(dense=dense, single=single, sparse={
        name: _modifier(params, f"sparse_vectors.{name}")
        for name, params in (sparse or {}).items()})


def _dense_params(params: Any, where: str) -> tuple[int, str]:
    if not isinstance(params, dict):
        raise RuleError(where, "must be {\"size\": n, \"distance\": ...}")
    if params.get("multivector_config") is not None:
        raise RuleError(f"{where}.multivector_config", "multivectors are not served")
    size, distance = params.get("size"), params.get("distance")
    if isinstance(size, bool) or not isinstance(size, int) or not 1 <= size <= 65536:
        raise RuleError(f"{where}.size", "must be an integer from 1 to 65536")
    if distance not in METRICS:
        raise RuleError(f"{where}.distance", f"must be one of {', '.join(METRICS)}")
    return size, METRICS[distance]


def _modifier(params: Any, where: str) -> str | None:
    if params is None:
        return None
    if not isinstance(params, dict):
        raise RuleError(where, "must be {} or {\"modifier\": \"idf\"}")
    modifier = params.get("modifier")
    if modifier not in (None, "none", "idf"):
        raise RuleError(f"{where}.modifier", "must be idf or none")
    return "idf" if modifier == "idf" else None


def own_collection_info(config: VectorsConfig, points: int) -> dict[str, Any]:
    """Qdrant's ``CollectionInfo`` for an application's own collection: its vectors as it
    created them (one unnamed vector, or a map in which ``""`` is a key; sparse ones by name)."""
    def params(size: int, metric: str) -> dict[str, Any]:
        return {"size": size, "distance": DISTANCES[metric]}

    info = _info(points)
    vectors: dict[str, Any] = params(*config.dense[""]) if config.single else {
        name: params(*spec) for name, spec in config.dense.items()}
    info["config"]["params"]["vectors"] = vectors
    if config.sparse:
        info["config"]["params"]["sparse_vectors"] = {
            name: {"modifier": modifier} if modifier else {}
            for name, modifier in config.sparse.items()}
    return info


def read_payload_change(kind: str, body: Any) -> PayloadChange:
    """Qdrant's payload updates: ``{"payload" | "keys", "points" | "filter"}``."""
    if not isinstance(body, dict):
        raise RuleError("body", "must be an object")
    if body.get("key") is not None:
        raise RuleError("key", "setting a nested key is not served yet: set the whole key")
    payload = body.get("payload", {}) if kind in ("set", "overwrite") else {}
    if not isinstance(payload, dict):
        raise RuleError("payload", "must be an object")
    keys = body.get("keys", []) if kind == "delete" else []
    if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
        raise RuleError("keys", "must be a list of payload keys")
    if not all(PAYLOAD_PATH.fullmatch(k) for k in keys):
        raise RuleError("keys", PATH_RULE)
    for key in [*payload, *keys]:
        if key.split(".", 1)[0].split("[", 1)[0] == RESERVED:
            raise RuleError("payload", f"{RESERVED} is embedshift's own and cannot be changed")
    if "filter" in body and body["filter"] is not None:
        return PayloadChange(kind=kind, payload=payload, keys=tuple(keys),  # type: ignore[arg-type]
                             filter=parse_filter(body["filter"]))
    return PayloadChange(kind=kind, payload=payload, keys=tuple(keys),  # type: ignore[arg-type]
                         ids=tuple(point_ids(body)))


class GroupsBody(QueryBody, frozen=True, kw_only=True):
    """Qdrant's ``points/query/groups``: a query whose hits are grouped by a payload key."""

    group_by: str
    group_size: Annotated[int, msgspec.Meta(ge=1, le=MAX_WINDOW)] = 3
    with_lookup: Any = None


class Grouping(NamedTuple):
    ask: Ask  # the query, searched as deep as a query may go, payload kept for grouping
    shown: Selector  # what each hit shows of its payload
    group_by: str
    group_size: int
    groups: int


def read_groups(body: GroupsBody, max_window: int = MAX_WINDOW) -> Grouping:
    if body.with_lookup is not None:
        raise RuleError("with_lookup", "is not served through embedshift")
    if body.group_by.replace('"', "").split(".", 1)[0].split("[", 1)[0] == RESERVED:
        raise RuleError("group_by", f"{RESERVED} is embedshift's own")
    if body.limit * body.group_size > max_window:
        raise RuleError("limit", f"limit x group_size may be at most {max_window} (max_limit)")
    depth = min(max_window, max(GROUP_DEPTH, 4 * body.limit * body.group_size))
    ask = read_query(msgspec.structs.replace(body, limit=depth, offset=None), max_window)
    return Grouping(ask._replace(payload=Selector(True)), ask.payload, body.group_by,
                    body.group_size, body.limit)


def groups_of(hits: list[Hit], grouping: Grouping, version: Version) -> list[dict[str, Any]]:
    """Hits grouped by the value (or each value, for a list) of ``group_by`` in their payload,
    groups in order of their best hit, at most ``group_size`` hits and ``groups`` groups."""
    points = scored_points(hits, grouping.ask, version)
    groups: dict[Any, list[dict[str, Any]]] = {}
    for point in points:
        value = _at(point["payload"] or {}, grouping.group_by)
        for key in value if isinstance(value, list) else [value]:
            if isinstance(key, bool) or not isinstance(key, str | int):
                continue
            members = groups.setdefault(key, [])
            if len(members) < grouping.group_size:
                members.append({**point, "payload": _select(point["payload"], grouping.shown)})
    return [{"id": key, "hits": members}
            for key, members in list(groups.items())[:grouping.groups]]


def _at(payload: dict[str, Any], path: str) -> Any:
    value: Any = payload
    for part in path.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


def read_recommend(raw: Any, field: str = "query.recommend") -> Recommend:
    """Examples to recommend from, ids or vectors; only the average-vector strategy."""
    if not isinstance(raw, dict):
        raise RuleError(field, "must be {\"positive\": [...], \"negative\": [...]}")
    if raw.get("strategy") not in (None, "average_vector"):
        raise RuleError(f"{field}.strategy", "only average_vector is served")
    examples = []
    for side in ("positive", "negative"):
        given = raw.get(side) or []
        if not isinstance(given, list) or not all(
                isinstance(x, int | str | list) and not isinstance(x, bool) for x in given):
            raise RuleError(f"{field}.{side}", "must be a list of point ids or vectors")
        examples.append([_numbers(x, f"{field}.{side}") if isinstance(x, list)
                         else canonical_id(x) for x in given])
    if not examples[0]:
        raise RuleError(f"{field}.positive", "at least one example is needed")
    return Recommend(*examples)


def average_vector(positive: list[list[float]], negative: list[list[float]]) -> list[float]:
    """Qdrant's average_vector strategy: the positives' mean, pushed away from the
    negatives' mean by the same distance."""
    size = len(positive[0])
    mean_pos = [sum(v[i] for v in positive) / len(positive) for i in range(size)]
    if not negative:
        return mean_pos
    mean_neg = [sum(v[i] for v in negative) / len(negative) for i in range(size)]
    return [2 * p - n for p, n in zip(mean_pos, mean_neg, strict=True)]


PAYLOAD_PATH = re.compile(r'(?:[\w-]+|"[^"]*")(?:\[\d*\])*(?:\.(?:[\w-]+|"[^"]*")(?:\[\d*\])*)*')
"""A payload key's path as Qdrant reads one: keys (word characters and ``-``, or quoted)
joined by dots, each with any ``[]`` or ``[n]``."""
PATH_RULE = ('holds a payload path Qdrant cannot read: keys of letters, digits, _ and - (or '
             '"quoted"), joined by dots, each with [] or [n]')


def read_index(body: Any) -> tuple[str, str]:
    """``PUT /collections/{name}/index``: ``{"field_name", "field_schema"}`` (a kind, or
    ``{"type": kind, ...}``)."""
    field = body.get("field_name") if isinstance(body, dict) else None
    if not isinstance(field, str) or not field:
        raise RuleError("field_name", "must name a payload key")
    if not PAYLOAD_PATH.fullmatch(field):
        raise RuleError("field_name", PATH_RULE)
    if field.replace('"', "").split(".", 1)[0].split("[", 1)[0] == RESERVED:
        raise RuleError("field_name", f"{RESERVED} is embedshift's own")
    schema = body.get("field_schema")
    if isinstance(schema, dict):
        schema = schema.get("type")
    if schema not in INDEX_SCHEMAS:
        raise RuleError("field_schema", f"must be one of {', '.join(INDEX_SCHEMAS)}")
    return field, str(schema)
