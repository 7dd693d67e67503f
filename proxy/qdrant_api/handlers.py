"""Qdrant's routes over embedshift's request path: a collection name is an alias, the caller's
affinity key (``x-qdrant-route-affinity``, or the header configured) is its sticky user."""

from __future__ import annotations

import contextlib
import hashlib
import time
from dataclasses import dataclass
from typing import Any, NamedTuple, TypeVar

import msgspec
from aiohttp import web
from opentelemetry.trace import SpanKind, StatusCode, Tracer

from proxy.config import Settings
from proxy.http import decode, random_key, read_body
from proxy.ingest.documents import Document, VectorPoint, checked, doc_id_of, point_id
from proxy.ingest.writer import Ingestor, apply_payload_change, held
from proxy.qdrant_api.plain import (
    plain,
    refuse_version_collection,
    version_collections,
)
from proxy.qdrant_api.shapes import (
    QDRANT_VERSION,
    Ask,
    GroupsBody,
    Incoming,
    QueryBatch,
    QueryBody,
    Recommend,
    SearchBatch,
    SearchBody,
    answer,
    average_vector,
    canonical_id,
    collection_info,
    groups_of,
    own_collection_info,
    point_ids,
    read_groups,
    read_index,
    read_offset,
    read_payload_change,
    read_points,
    read_query,
    read_search,
    read_selector,
    read_vectors_config,
    record,
    scored_points,
    wants_vector,
)
from proxy.serving.embed import Embedder
from proxy.serving.query import SearchRequest, SearchResponse, asked
from proxy.serving.readiness import Lifecycle
from proxy.serving.search import Searcher, migrated_vectors, split_named
from proxy.telemetry import Attr
from proxy.vectors.base import (
    RESERVED,
    Hit,
    Named,
    Stored,
    VectorStore,
    id_key,
    parse_filter,
)
from rollout_rules.errors import (
    BackendError,
    DocumentNotFound,
    FeatureOff,
    NotFoundError,
    RuleError,
)
from rollout_rules.model import Target, Version, rule_error

T = TypeVar("T")
MAX_BODY_BYTES = 32 * 1024 * 1024  # Qdrant's own default limit
VERSION_HEADER = "X-Embedshift-Model-Version"
_ENCODER = msgspec.json.Encoder()


@dataclass(frozen=True)
class Parts:
    settings: Settings
    searcher: Searcher
    tracer: Tracer
    ingestor: Ingestor
    embedder: Embedder
    lifecycle: Lifecycle  # the process's, shared with the native edge: draining on both


PARTS = web.AppKey("qdrant_parts", Parts)


def _json(result: Any, started: float, version: str | None = None,
          max_bytes: int | None = None) -> web.Response:
    """Qdrant's answer; past ``max_bytes`` (a search's), a 400 naming the bound instead."""
    body = _ENCODER.encode(answer(result, time.perf_counter() - started))
    if max_bytes is not None and len(body) > max_bytes:
        raise RuleError("limit", f"the answer would be {len(body)} bytes, more than "
                                 f"max_answer_bytes ({max_bytes}): ask for fewer points, or "
                                 "leave payloads and vectors out")
    response = web.Response(body=body, content_type="application/json")
    if version is not None:
        response.headers[VERSION_HEADER] = version
    return response


async def _body(request: web.Request, kind: type[T]) -> T:
    """The body read and decoded as every edge reads and decodes one (``proxy.http``)."""
    raw = await read_body(request, MAX_BODY_BYTES, request.app[PARTS].settings.body_timeout_s)
    return decode(raw or b"{}", kind)


def affinity(request: web.Request) -> str | None:
    """The caller's sticky key: the configured header, else Qdrant's route affinity, else
    (with ``qdrant_affinity_from_key``) an identity of the caller's api-key, never the key."""
    settings = request.app[PARTS].settings
    value = (request.headers.get(settings.qdrant_affinity_header)
             or request.headers.get("x-qdrant-route-affinity"))
    if value:
        return value[:256]
    key = request.headers.get("api-key")
    if settings.qdrant_affinity_from_key and key:
        digest = hashlib.blake2b(key.encode("utf-8", "surrogateescape"), digest_size=12)
        return f"api-key:{digest.hexdigest()}"
    return None


async def root(request: web.Request) -> web.Response:
    return web.json_response({"title": "qdrant - vector search engine (embedshift)",
                              "version": QDRANT_VERSION})


async def healthz(request: web.Request) -> web.Response:
    """Liveness (``/healthz``, ``/livez``): the process answers, draining or not (a probe that
    failed here would have it killed mid-drain)."""
    return web.Response(text="healthz check passed")


async def readyz(request: web.Request) -> web.Response:
    """Readiness: 503 from the moment a shutdown begins, so load balancers send no more."""
    if request.app[PARTS].lifecycle.draining:
        return web.Response(text="draining: shutting down", status=503)
    return web.Response(text="all shards are ready")


def _aliases(request: web.Request) -> list[str]:
    return sorted(request.app[PARTS].searcher.rules.rollouts)


async def list_collections(request: web.Request) -> web.Response:
    """The declared aliases, and the application's own collections (never a version's)."""
    started = time.perf_counter()
    searcher = request.app[PARTS].searcher
    hidden = version_collections(searcher) | set(_aliases(request))
    own = [name for name in await searcher.store.collections() if name not in hidden]
    return _json({"collections": [{"name": name} for name in [*_aliases(request), *own]]},
                 started)


async def collection_exists(request: web.Request) -> web.Response:
    started = time.perf_counter()
    try:
        await plain(request.app[PARTS].searcher, request.match_info["name"])
    except (NotFoundError, FeatureOff):
        return _json({"exists": False}, started)
    return _json({"exists": True}, started)


async def create_collection(request: web.Request) -> web.Response:
    """A collection of the application's own; an alias's are created by its rule."""
    started = time.perf_counter()
    searcher = request.app[PARTS].searcher
    name = request.match_info["name"]
    if name in searcher.rules.rollouts:
        raise FeatureOff(f"{name} is a declared alias: its versions' collections are created "
                         f"by its rule (embedshift init {name} --file rules.toml --force)")
    refuse_version_collection(searcher, name)
    if await searcher.store.describe(Target(collection=name)) is not None:
        raise RuleError("name", f"collection {name} already exists")
    config = read_vectors_config(await _raw(request))
    await searcher.store.create(Target(collection=name), config)
    return _json(True, started)


async def delete_collection(request: web.Request) -> web.Response:
    started = time.perf_counter()
    name = request.match_info["name"]
    own = await plain(request.app[PARTS].searcher, name)
    if own is None:
        raise FeatureOff(f"{name} is a declared alias: retire and archive its versions, or "
                         "`embedshift delete` it, rather than drop a collection")
    await request.app[PARTS].searcher.store.drop(own.target)
    return _json(True, started)


async def create_index(request: web.Request) -> web.Response:
    """A payload index, built in every version of an alias (or the application's own
    collection); never on embedshift's own keys."""
    started = time.perf_counter()
    searcher = request.app[PARTS].searcher
    field, schema = read_index(await _raw(request))
    own = await plain(searcher, request.match_info["name"])
    versions = [own.version] if own is not None else \
        searcher.rollout(request.match_info["name"]).versions
    for version in versions:
        if await searcher.store.describe(version.target) is not None:
            await searcher.store.index_field(version.target, field, schema)
    return _json({"operation_id": 0, "status": "completed"}, started)


async def list_aliases(request: web.Request) -> web.Response:
    started = time.perf_counter()
    searcher = request.app[PARTS].searcher
    return _json({"aliases": [
        {"alias_name": name, "collection_name": rollout.version(rollout.stable).target.collection}
        for name, rollout in sorted(searcher.rules.rollouts.items())]}, started)


async def collection_aliases(request: web.Request) -> web.Response:
    started = time.perf_counter()
    if await plain(request.app[PARTS].searcher, request.match_info["name"]) is not None:
        return _json({"aliases": []}, started)
    rollout = request.app[PARTS].searcher.rollout(request.match_info["name"])
    return _json({"aliases": [{"alias_name": rollout.alias, "collection_name":
                               rollout.version(rollout.stable).target.collection}]}, started)


async def get_collection(request: web.Request) -> web.Response:
    """The collection as the version this caller is routed to holds it."""
    started = time.perf_counter()
    searcher = request.app[PARTS].searcher
    own = await plain(searcher, request.match_info["name"])
    version = own.version if own is not None else searcher.route(
        request.match_info["name"], affinity(request), random_key())
    info = await searcher.store.describe(version.target)  # None: not written yet, 0 points
    points = info.points if info else 0
    if own is not None:
        return _json(own_collection_info(own.config, points), started)
    return _json(collection_info(version, points, searcher.rollout(request.match_info["name"])),
                 started, version.name)


class Answered(NamedTuple):
    hits: list[Hit]
    version: Version  # whose collection answered (its metric reads the scores)
    served_by: str  # the version's name; "" for the application's own collection


async def _answered(request: web.Request, ask: Ask) -> Answered:
    """One query: in the application's own collection, or through the request path in a
    server span like the native API's."""
    parts = request.app[PARTS]
    alias = request.match_info["name"]
    own = await plain(parts.searcher, alias)
    if own is not None:
        vector = ask.vector if ask.recommend is None else await _recommended(
            parts.searcher.store, own.version, ask.recommend)
        return Answered(await own.hits(ask._replace(vector=vector)), own.version, "")
    span = parts.tracer.start_span("POST /collections/{name}/points/query",
                                   kind=SpanKind.SERVER)
    try:
        found = await _found(parts, alias, ask, affinity(request), span)
    except TimeoutError as exc:
        span.set_status(StatusCode.ERROR, "deadline exceeded")
        raise BackendError(f"no answer within {parts.searcher.deadline_s:g}s") from exc
    except Exception as exc:
        span.set_attribute(Attr.ALIAS, alias)
        span.record_exception(exc)
        raise
    finally:
        span.end()
    version = parts.searcher.rollout(alias).version(found.model_version)
    request.setdefault(TRACES, []).append(found.trace_id)
    return Answered(found.hits, version, found.model_version)


TRACES = web.RequestKey("embedshift_traces", list[str])
"""The trace ids of a request's answers, for the header feedback names them by."""
TRACE_HEADER = "x-embedshift-trace-id"


async def trace_header(request: web.Request, response: web.StreamResponse) -> None:
    """Each answer's trace id (a batch's, comma-separated), as ``POST /v1/feedback`` takes
    them; on answers routed through embedshift only."""
    traces = request.get(TRACES)
    if traces:
        response.headers[TRACE_HEADER] = ",".join(traces)


async def _found(parts: Parts, alias: str, ask: Ask, user: str | None,
                 span: Any) -> SearchResponse:
    """Text is routed and encoded; a vector is searched where it was made (its version when
    this proxy handed it out from /v1/embeddings, else stable's); examples to recommend from
    are looked up in the caller's version and searched there."""
    searcher = parts.searcher
    if ask.stage is not None:  # named and carried vectors, prefetches, a fusion
        rollout = searcher.rollout(alias)
        dense = migrated_vectors(ask.stage, rollout)
        made = (await parts.embedder.space_of(alias, dense[0]) or rollout.stable) if dense \
            else searcher.route(alias, user, random_key()).name  # text, or carried alone
        return await searcher.search_stage(alias, ask.stage, made,
                                           with_payload=ask.payload.wanted, span=span)
    if ask.recommend is not None:
        version = searcher.route(alias, user, random_key())
        vector = await _recommended(searcher.store, version, ask.recommend)
        examples = {id_key(x) for x in (*ask.recommend.positive, *ask.recommend.negative)
                    if not isinstance(x, list)}
        found = await searcher.search_vector(
            alias, vector, limit=min(parts.settings.max_limit, ask.window + len(examples)),
            raw_filter=ask.filter, version=version.name, with_payload=ask.payload.wanted,
            span=span)
        return msgspec.structs.replace(found, hits=[
            hit for hit in found.hits if id_key(hit.id) not in examples])
    if ask.vector is not None:
        space = await parts.embedder.space_of(alias, ask.vector)
        return await searcher.search_vector(alias, ask.vector, limit=ask.window,
                                            raw_filter=ask.filter, version=space,
                                            with_payload=ask.payload.wanted, span=span)
    request = SearchRequest(query=ask.text or "", user_id=user, limit=ask.window,
                            filter=ask.filter, with_payload=ask.payload.wanted)
    return await searcher.search(alias, asked(request, random_key()), span)


async def _recommended(store: VectorStore, version: Version, examples: Recommend
                       ) -> list[float]:
    """The average-vector query for ``examples``: ids are looked up in ``version``."""
    ids = [x for x in (*examples.positive, *examples.negative) if not isinstance(x, list)]
    written = await store.describe(version.target) is not None
    stored = await store.retrieve(version.target, [point_id(i, version) for i in ids],
                                  vectors=True) if written and ids else []
    vectors = {id_key(doc_id_of(p)): p.vector for p in stored if p.vector is not None}

    def vector(example: int | str | list[float]) -> list[float]:
        if isinstance(example, list):
            return example
        found = vectors.get(id_key(example))
        if found is None:
            raise DocumentNotFound(version.target.collection, example)
        return found

    return average_vector([vector(x) for x in examples.positive],
                          [vector(x) for x in examples.negative])


async def _each(request: web.Request, asks: list[Ask]) -> list[tuple[dict[str, Any], str]]:
    """Every query of a request, as Qdrant's ``{"points": [...]}``, and who served it."""
    results = []
    for ask in asks:
        a = await _answered(request, ask)
        vectors = await _vectors(request, a) if ask.with_vector else None
        results.append(({"points": scored_points(a.hits, ask, a.version, vectors)},
                        a.served_by))
    return results


async def _vectors(request: web.Request, answered: Answered) -> dict[Any, Any]:
    """The hits' vectors, as the version that answered holds them."""
    version = answered.version
    stored = await request.app[PARTS].searcher.store.retrieve(
        version.target, [point_id(h.id, version) for h in answered.hits], vectors=True)
    return {id_key(doc_id_of(p)): _shown(request, p, version) for p in stored
            if p.vector is not None or p.named is not None}


def _shown(request: web.Request, point: Stored, version: Version) -> Any:
    """A point's vectors as the application names them: an alias's own vector under the
    rule's name for it (a map, with the carried ones, when the rule carries any), an
    application's own collection's as they are."""
    if point.named is None:
        return point.vector
    rollout = request.app[PARTS].searcher.rules.rollouts.get(request.match_info["name"])
    if rollout is None:
        return point.named
    if not (rollout.vector or rollout.carried):
        return point.vector
    own = version.target.vector_name or ""
    return {rollout.vector if name == own else name: value
            for name, value in point.named.items() if name == own or name in rollout.carried}


def _max_limit(request: web.Request) -> int:
    return request.app[PARTS].settings.max_limit


def _max_answer(request: web.Request) -> int:
    return request.app[PARTS].settings.max_answer_bytes


def _bounded(request: web.Request, searches: list[T]) -> list[T]:
    """A batch's searches, no more than ``max_batch_searches``."""
    bound = request.app[PARTS].settings.max_batch_searches
    if len(searches) > bound:
        raise RuleError("searches", f"holds {len(searches)} searches; a batch holds at most "
                                    f"{bound} (max_batch_searches)")
    return searches


async def query(request: web.Request) -> web.Response:
    started = time.perf_counter()
    ask = read_query(await _body(request, QueryBody), _max_limit(request))
    [(result, version)] = await _each(request, [ask])
    return _json(result, started, version or None, _max_answer(request))


async def query_batch(request: web.Request) -> web.Response:
    started = time.perf_counter()
    batch = await _body(request, QueryBatch)
    asks = [read_query(body, _max_limit(request))  # all read first
            for body in _bounded(request, batch.searches)]
    results = await _each(request, asks)
    return _json([result for result, _ in results], started,
                 ",".join(sorted({v for _, v in results if v})) or None, _max_answer(request))


async def search(request: web.Request) -> web.Response:
    started = time.perf_counter()
    ask = read_search(await _body(request, SearchBody), _max_limit(request))
    [(result, version)] = await _each(request, [ask])
    return _json(result["points"], started, version or None, _max_answer(request))


async def search_batch(request: web.Request) -> web.Response:
    started = time.perf_counter()
    batch = await _body(request, SearchBatch)
    asks = [read_search(body, _max_limit(request)) for body in _bounded(request, batch.searches)]
    results = await _each(request, asks)
    return _json([result["points"] for result, _ in results], started,
                 ",".join(sorted({v for _, v in results if v})) or None, _max_answer(request))


# -- writes (the write key) and reads of stored points (the caller's version) -----------------

async def _raw(request: web.Request) -> Any:
    return await _body(request, dict[str, Any])


async def upsert(request: web.Request) -> web.Response:
    """Documents are written into every active version, as ingestion writes them; points with
    the writer's own vectors into stable's space, their text kept for the backfill."""
    started = time.perf_counter()
    parts = request.app[PARTS]
    points = read_points(await _raw(request))
    own = await plain(parts.searcher, request.match_info["name"])
    if own is not None:
        await own.upsert(points)
        return _json({"operation_id": 0, "status": "completed"}, started)
    rollout = parts.searcher.rollout(request.match_info["name"])
    carried: dict[Any, dict[str, Named]] = {}
    for n, given in enumerate(points):
        point = given
        if point.named:  # the migrated vector by its application's name, the carried ones
            migrated, carried[point.id] = split_named(rollout, point.named,
                                                      f"points[{n}].vector")
            if migrated is not None:
                points[n] = point = point._replace(vector=migrated)
        if point.text is None and point.vector is None:
            raise RuleError(f"points[{n}].vector", f"needs {rollout.alias}'s own vector "
                            f"({rollout.vector or 'the unnamed one'}), or the text as a "
                            "Document")
    documents = [_document(n, p) for n, p in enumerate(points) if p.text is not None]
    vectors = [VectorPoint(p.id, p.vector, p.payload) for p in points if p.vector is not None]
    if documents:
        results = await parts.ingestor.write(rollout, documents, live=True, named=carried)
        unstored = sorted(f"{r.id}" for r in results if rollout.stable in r.failed)
        if unstored:  # a candidate's copy the backfill writes later; stable's nobody does
            raise BackendError(f"stable could not be written: {results}", public=(
                f"stable ({rollout.stable}) could not be written for ids {unstored[:10]}: "
                "send them again"))
    if vectors:
        await parts.ingestor.write_vectors(rollout, vectors, named=carried)
    return _json({"operation_id": 0, "status": "completed"}, started)


def _document(n: int, point: Incoming) -> Document:
    try:
        return checked(Document(id=point.id, text=point.text or "", payload=point.payload))
    except RuleError as exc:
        raise RuleError(f"points[{n}].{exc.field}", exc.message) from None


async def delete_points(request: web.Request) -> web.Response:
    """Each point leaves every version that holds it; one no version holds is no error (as in
    Qdrant)."""
    started = time.perf_counter()
    parts = request.app[PARTS]
    body = await _raw(request)
    where = parse_filter(body.get("filter")) if "filter" in body else None
    ids = [] if where is not None else point_ids(body)
    own = await plain(parts.searcher, request.match_info["name"])
    if own is not None:
        await (parts.searcher.store.delete_where(own.target, where) if where is not None
               else parts.searcher.store.delete(own.target, ids))
        return _json({"operation_id": 0, "status": "completed"}, started)
    rollout = parts.searcher.rollout(request.match_info["name"])
    if where is not None:
        await parts.ingestor.delete_where(rollout, where)
    for doc_id in ids:
        with contextlib.suppress(DocumentNotFound):  # already gone
            await parts.ingestor.delete(rollout, doc_id)
    return _json({"operation_id": 0, "status": "completed"}, started)


async def _routed(request: web.Request) -> Version:
    """The version this caller reads: its routed one, or the application's own collection."""
    searcher = request.app[PARTS].searcher
    own = await plain(searcher, request.match_info["name"])
    if own is not None:
        return own.version
    return searcher.route(request.match_info["name"], affinity(request), random_key())


async def retrieve(request: web.Request) -> web.Response:
    started = time.perf_counter()
    body = await _raw(request)
    result = await _records(request, point_ids(body, "ids"), body.get("with_payload"),
                            body.get("with_vector", body.get("with_vectors")))
    return _json(result, started, (await _routed(request)).name, _max_answer(request))


async def retrieve_one(request: web.Request) -> web.Response:
    started = time.perf_counter()
    raw = request.match_info["id"]
    doc_id = canonical_id(int(raw) if raw.isascii() and raw.isdigit() else raw)
    found = await _records(request, [doc_id], True, None)
    if not found:
        raise DocumentNotFound(request.match_info["name"], doc_id)
    return _json(found[0], started, (await _routed(request)).name)


async def _records(request: web.Request, ids: list[int | str], with_payload: Any,
                   with_vector: Any) -> list[dict[str, Any]]:
    vectors = wants_vector(with_vector)
    selector = read_selector(with_payload)
    version = await _routed(request)
    store = request.app[PARTS].searcher.store
    if await store.describe(version.target) is None:  # nothing written yet: no point
        return []
    stored = await store.retrieve(version.target, [point_id(i, version) for i in ids],
                                  vectors=vectors)
    return [record(doc_id_of(point), point.payload, selector, _shown(request, point, version))
            for point in stored]


async def scroll(request: web.Request) -> web.Response:
    started = time.perf_counter()
    body = await _raw(request)
    if body.get("order_by") is not None:
        raise RuleError("order_by", "is not served yet through embedshift")
    vectors = wants_vector(body.get("with_vector", body.get("with_vectors")))
    limit = body.get("limit", 10)
    bound = max(_max_limit(request), 10_000)
    if not isinstance(limit, int) or isinstance(limit, bool) or not 1 <= limit <= bound:
        raise RuleError("limit", f"must be an integer from 1 to {bound}")
    selector = read_selector(body.get("with_payload"))
    offset = read_offset(body.get("offset"))
    where = parse_filter(body.get("filter"))
    version = await _routed(request)
    store = request.app[PARTS].searcher.store
    # offsets speak the writer's ids, as every answer does: the page after the last is read
    # one point deeper, and that point's id is where the next page starts
    start = None if offset is None else point_id(offset, version)
    points, _ = await store.scroll(version.target, start, limit + 1, vectors=vectors,
                                   query_filter=where) \
        if await store.describe(version.target) is not None else ([], None)
    after = doc_id_of(points[limit]) if len(points) > limit else None
    return _json({"points": [record(doc_id_of(p), p.payload, selector,
                                    _shown(request, p, version)) for p in points[:limit]],
                  "next_page_offset": after}, started, version.name, _max_answer(request))


async def count(request: web.Request) -> web.Response:
    started = time.perf_counter()
    body = await _raw(request)
    where = parse_filter(body.get("filter"))
    version = await _routed(request)
    store = request.app[PARTS].searcher.store
    written = await store.describe(version.target) is not None  # else nothing yet: 0
    return _json({"count": await store.count(version.target, where) if written else 0},
                 started, version.name)


async def _change_payload(request: web.Request, kind: str) -> web.Response:
    """A payload change, in every version of an alias or in the application's collection."""
    started = time.perf_counter()
    parts = request.app[PARTS]
    change = read_payload_change(kind, await _raw(request))
    own = await plain(parts.searcher, request.match_info["name"])
    if own is not None:
        if change.ids is not None:  # a missing point is a 404, as in Qdrant
            present = await held(parts.searcher.store, own.target, list(change.ids))
            for doc_id in change.ids:
                if doc_id not in present:
                    raise DocumentNotFound(own.target.collection, doc_id)
        await apply_payload_change(parts.searcher.store, own.target, change,
                                   None if change.ids is None else list(change.ids),
                                   {RESERVED})
    else:
        await parts.ingestor.update_payload(
            parts.searcher.rollout(request.match_info["name"]), change)
    return _json({"operation_id": 0, "status": "completed"}, started)


async def set_payload(request: web.Request) -> web.Response:
    return await _change_payload(request, "set")


async def overwrite_payload(request: web.Request) -> web.Response:
    return await _change_payload(request, "overwrite")


async def delete_payload(request: web.Request) -> web.Response:
    return await _change_payload(request, "delete")


async def clear_payload(request: web.Request) -> web.Response:
    return await _change_payload(request, "clear")


async def query_groups(request: web.Request) -> web.Response:
    started = time.perf_counter()
    grouping = read_groups(await _body(request, GroupsBody), _max_limit(request))
    answered = await _answered(request, grouping.ask)
    return _json({"groups": groups_of(answered.hits, grouping, answered.version)}, started,
                 answered.served_by or None)


async def recommend(request: web.Request) -> web.Response:
    """The legacy ``points/recommend``: examples by id or vector, the average-vector strategy."""
    started = time.perf_counter()
    body = await _raw(request)
    examples = {key: body.pop(key) for key in ("positive", "negative", "strategy")
                if key in body}
    try:
        query_body = msgspec.convert({**body, "query": {"recommend": examples}}, QueryBody)
    except msgspec.ValidationError as exc:
        raise rule_error(str(exc)) from None
    [(result, version)] = await _each(request, [read_query(query_body, _max_limit(request))])
    return _json(result["points"], started, version or None)
