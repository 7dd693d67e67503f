"""Qdrant's routes over embedshift's request path: a collection name is an alias, the caller's
affinity key (``x-qdrant-route-affinity``, or the header configured) is its sticky user."""

from __future__ import annotations

import contextlib
import hashlib
import hmac
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple, TypeVar

import msgspec
from opentelemetry.trace import SpanKind, StatusCode, Tracer

from proxy.config import Settings
from proxy.http import decode, public_message, random_key, status_of
from proxy.ingest.documents import Document, VectorPoint, checked, doc_id_of, point_id
from proxy.ingest.writer import Ingestor, apply_payload_change, held
from proxy.qdrant_api.plain import (
    plain,
    refuse_version_collection,
    version_collections,
)
from proxy.qdrant_api.shapes import (
    Ask,
    GroupsBody,
    Incoming,
    QueryBatch,
    QueryBody,
    Recommend,
    SearchBatch,
    SearchBody,
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
    AccessError,
    BackendError,
    DocumentNotFound,
    EmbedshiftError,
    FeatureOff,
    NotFoundError,
    RuleError,
)
from rollout_rules.model import Target, Version, rule_error

T = TypeVar("T")
TRACE_HEADER = "x-embedshift-trace-id"
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


@dataclass
class Call:
    """One request to Qdrant's API as every edge hands it over (REST, gRPC): the collection it
    names, the caller's headers (case-insensitive), its body as Qdrant's REST API spells it,
    and the trace ids of the answers it was given (filled in by the handler)."""

    parts: Parts
    name: str
    headers: Mapping[str, str]
    body: bytes = b""
    key: str = ""  # the path's last name: a point's id, an index's field
    traces: list[str] = field(default_factory=list)

    def decoded(self, kind: type[T]) -> T:
        """The body decoded as every edge decodes one (``proxy.http``)."""
        return decode(self.body or b"{}", kind)


class Reply(NamedTuple):
    """A handler's answer: Qdrant's ``result``, the version that served it (for the header or
    trailing metadata), and the bound on its size (a search's: ``max_answer_bytes``)."""

    result: Any
    version: str | None = None
    max_bytes: int | None = None


def too_large(size: int, max_bytes: int | None) -> RuleError | None:
    """The refusal of an answer of ``size`` bytes past ``max_bytes``, if it is."""
    if max_bytes is None or size <= max_bytes:
        return None
    return RuleError("limit", f"the answer would be {size} bytes, more than "
                              f"max_answer_bytes ({max_bytes}): ask for fewer points, or "
                              "leave payloads and vectors out")


def refusal_of(exc: EmbedshiftError) -> tuple[int, str]:
    """How every edge of this API refuses ``exc``: its HTTP status, and its public message
    led by the field it names (when the message does not already)."""
    message = public_message(exc)
    named = getattr(exc, "field", None)
    return status_of(exc), f"{named}: {message}" if named and named not in message else message


def given_key(headers: Mapping[str, str]) -> str | None:
    """The api-key a caller gave: ``api-key``, or ``Authorization: Bearer``."""
    given = headers.get("api-key")
    if given is None:
        scheme, _, token = headers.get("authorization", "").partition(" ")
        given = token.strip() if scheme.lower() == "bearer" else None
    return given


def check_access(settings: Settings, given: str | None, *, writing: bool) -> None:
    """Writes need the write key (off without one); reads the read key when one is set (the
    write key opens them too). Keys are compared in constant time."""
    write = settings.qdrant_write_key
    if writing and not write:
        raise FeatureOff("writes through the Qdrant API are off: set "
                         "EMBEDSHIFT_QDRANT_WRITE_KEY to enable them")
    if writing:
        if not _same(given, write):
            raise AccessError("a valid api-key with write access is required")
        return
    read = settings.qdrant_read_key
    if read and not (_same(given, read) or (write and _same(given, write))):
        raise AccessError("a valid api-key is required")


def _same(given: str | None, expected: str | None) -> bool:
    return given is not None and expected is not None and hmac.compare_digest(
        given.encode("utf-8", "surrogateescape"), expected.encode())


def affinity(call: Call) -> str | None:
    """The caller's sticky key: the configured header, else Qdrant's route affinity, else
    (with ``qdrant_affinity_from_key``) an identity of the caller's api-key, never the key."""
    settings = call.parts.settings
    value = (call.headers.get(settings.qdrant_affinity_header)
             or call.headers.get("x-qdrant-route-affinity"))
    if value:
        return value[:256]
    key = call.headers.get("api-key")
    if settings.qdrant_affinity_from_key and key:
        digest = hashlib.blake2b(key.encode("utf-8", "surrogateescape"), digest_size=12)
        return f"api-key:{digest.hexdigest()}"
    return None


def _aliases(call: Call) -> list[str]:
    return sorted(call.parts.searcher.rules.rollouts)


async def list_collections(call: Call) -> Reply:
    """The declared aliases, and the application's own collections (never a version's)."""
    searcher = call.parts.searcher
    hidden = version_collections(searcher) | set(_aliases(call))
    own = [name for name in await searcher.store.collections() if name not in hidden]
    return Reply({"collections": [{"name": name} for name in [*_aliases(call), *own]]})


async def collection_exists(call: Call) -> Reply:
    try:
        await plain(call.parts.searcher, call.name)
    except (NotFoundError, FeatureOff):
        return Reply({"exists": False})
    return Reply({"exists": True})


async def create_collection(call: Call) -> Reply:
    """A collection of the application's own; an alias's are created by its rule."""
    searcher = call.parts.searcher
    name = call.name
    if name in searcher.rules.rollouts:
        raise FeatureOff(f"{name} is a declared alias: its versions' collections are created "
                         f"by its rule (embedshift init {name} --file rules.toml --force)")
    refuse_version_collection(searcher, name)
    if await searcher.store.describe(Target(collection=name)) is not None:
        raise RuleError("name", f"collection {name} already exists")
    config = read_vectors_config(call.decoded(dict[str, Any]))
    await searcher.store.create(Target(collection=name), config)
    return Reply(True)


async def delete_collection(call: Call) -> Reply:
    name = call.name
    own = await plain(call.parts.searcher, name)
    if own is None:
        raise FeatureOff(f"{name} is a declared alias: retire and archive its versions, or "
                         "`embedshift delete` it, rather than drop a collection")
    await call.parts.searcher.store.drop(own.target)
    return Reply(True)


async def create_index(call: Call) -> Reply:
    """A payload index, built in every version of an alias (or the application's own
    collection); never on embedshift's own keys."""
    searcher = call.parts.searcher
    field, schema = read_index(call.decoded(dict[str, Any]))
    own = await plain(searcher, call.name)
    versions = [own.version] if own is not None else \
        searcher.rollout(call.name).versions
    for version in versions:
        if await searcher.store.describe(version.target) is not None:
            await searcher.store.index_field(version.target, field, schema)
    return Reply({"operation_id": 0, "status": "completed"})


async def delete_index(call: Call) -> Reply:
    """A payload index dropped from every version of an alias (or the application's own
    collection); never embedshift's own."""
    searcher = call.parts.searcher
    field, _ = read_index({"field_name": call.key, "field_schema": "keyword"})
    own = await plain(searcher, call.name)
    versions = [own.version] if own is not None else searcher.rollout(call.name).versions
    for version in versions:
        if await searcher.store.describe(version.target) is not None:
            await searcher.store.drop_index(version.target, field)
    return Reply({"operation_id": 0, "status": "completed"})


async def list_aliases(call: Call) -> Reply:
    searcher = call.parts.searcher
    return Reply({"aliases": [
        {"alias_name": name, "collection_name": rollout.version(rollout.stable).target.collection}
        for name, rollout in sorted(searcher.rules.rollouts.items())]})


async def collection_aliases(call: Call) -> Reply:
    if await plain(call.parts.searcher, call.name) is not None:
        return Reply({"aliases": []})
    rollout = call.parts.searcher.rollout(call.name)
    return Reply({"aliases": [{"alias_name": rollout.alias, "collection_name":
                               rollout.version(rollout.stable).target.collection}]})


async def get_collection(call: Call) -> Reply:
    """The collection as the version this caller is routed to holds it."""
    searcher = call.parts.searcher
    own = await plain(searcher, call.name)
    version = own.version if own is not None else searcher.route(
        call.name, affinity(call), random_key())
    info = await searcher.store.describe(version.target)  # None: not written yet, 0 points
    points = info.points if info else 0
    if own is not None:
        return Reply(own_collection_info(own.config, points))
    return Reply(collection_info(version, points, searcher.rollout(call.name)), version.name)


class Answered(NamedTuple):
    hits: list[Hit]
    version: Version  # whose collection answered (its metric reads the scores)
    served_by: str  # the version's name; "" for the application's own collection


async def _answered(call: Call, ask: Ask) -> Answered:
    """One query: in the application's own collection, or through the request path in a
    server span like the native API's."""
    parts = call.parts
    alias = call.name
    own = await plain(parts.searcher, alias)
    if own is not None:
        vector = ask.vector if ask.recommend is None else await _recommended(
            parts.searcher.store, own.version, ask.recommend)
        return Answered(await own.hits(ask._replace(vector=vector)), own.version, "")
    span = parts.tracer.start_span("POST /collections/{name}/points/query",
                                   kind=SpanKind.SERVER)
    try:
        found = await _found(parts, alias, ask, affinity(call), span)
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
    call.traces.append(found.trace_id)
    return Answered(found.hits, version, found.model_version)


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


async def _each(call: Call, asks: list[Ask]) -> list[tuple[dict[str, Any], str]]:
    """Every query of a request, as Qdrant's ``{"points": [...]}``, and who served it."""
    results = []
    for ask in asks:
        a = await _answered(call, ask)
        vectors = await _vectors(call, a) if ask.with_vector else None
        results.append(({"points": scored_points(a.hits, ask, a.version, vectors)},
                        a.served_by))
    return results


async def _vectors(call: Call, answered: Answered) -> dict[Any, Any]:
    """The hits' vectors, as the version that answered holds them."""
    version = answered.version
    stored = await call.parts.searcher.store.retrieve(
        version.target, [point_id(h.id, version) for h in answered.hits], vectors=True)
    return {id_key(doc_id_of(p)): _shown(call, p, version) for p in stored
            if p.vector is not None or p.named is not None}


def _shown(call: Call, point: Stored, version: Version) -> Any:
    """A point's vectors as the application names them: an alias's own vector under the
    rule's name for it (a map, with the carried ones, when the rule carries any), an
    application's own collection's as they are."""
    if point.named is None:
        return point.vector
    rollout = call.parts.searcher.rules.rollouts.get(call.name)
    if rollout is None:
        return point.named
    if not (rollout.vector or rollout.carried):
        return point.vector
    own = version.target.vector_name or ""
    return {rollout.vector if name == own else name: value
            for name, value in point.named.items() if name == own or name in rollout.carried}


def _max_limit(call: Call) -> int:
    return call.parts.settings.max_limit


def _max_answer(call: Call) -> int:
    return call.parts.settings.max_answer_bytes


def _bounded(call: Call, searches: list[T]) -> list[T]:
    """A batch's searches, no more than ``max_batch_searches``."""
    bound = call.parts.settings.max_batch_searches
    if len(searches) > bound:
        raise RuleError("searches", f"holds {len(searches)} searches; a batch holds at most "
                                    f"{bound} (max_batch_searches)")
    return searches


def _served(results: list[tuple[dict[str, Any], str]]) -> str | None:
    """The versions that served a batch, comma-separated; None when none did."""
    return ",".join(sorted({v for _, v in results if v})) or None


async def query(call: Call) -> Reply:
    ask = read_query(call.decoded(QueryBody), _max_limit(call))
    [(result, version)] = await _each(call, [ask])
    return Reply(result, version or None, _max_answer(call))


async def query_batch(call: Call) -> Reply:
    batch = call.decoded(QueryBatch)
    asks = [read_query(body, _max_limit(call))  # all read first
            for body in _bounded(call, batch.searches)]
    results = await _each(call, asks)
    return Reply([result for result, _ in results], _served(results), _max_answer(call))


async def search(call: Call) -> Reply:
    ask = read_search(call.decoded(SearchBody), _max_limit(call))
    [(result, version)] = await _each(call, [ask])
    return Reply(result["points"], version or None, _max_answer(call))


async def search_batch(call: Call) -> Reply:
    batch = call.decoded(SearchBatch)
    asks = [read_search(body, _max_limit(call)) for body in _bounded(call, batch.searches)]
    results = await _each(call, asks)
    return Reply([result["points"] for result, _ in results], _served(results),
                 _max_answer(call))


# -- writes (the write key) and reads of stored points (the caller's version) -----------------

async def _raw(call: Call) -> Any:
    return call.decoded(dict[str, Any])


async def upsert(call: Call) -> Reply:
    """Documents are written into every active version, as ingestion writes them; points with
    the writer's own vectors into stable's space, their text kept for the backfill."""
    parts = call.parts
    points = read_points(call.decoded(dict[str, Any]))
    own = await plain(parts.searcher, call.name)
    if own is not None:
        await own.upsert(points)
        return Reply({"operation_id": 0, "status": "completed"})
    rollout = parts.searcher.rollout(call.name)
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
    return Reply({"operation_id": 0, "status": "completed"})


def _document(n: int, point: Incoming) -> Document:
    try:
        return checked(Document(id=point.id, text=point.text or "", payload=point.payload))
    except RuleError as exc:
        raise RuleError(f"points[{n}].{exc.field}", exc.message) from None


async def delete_points(call: Call) -> Reply:
    """Each point leaves every version that holds it; one no version holds is no error (as in
    Qdrant)."""
    parts = call.parts
    body = call.decoded(dict[str, Any])
    where = parse_filter(body.get("filter")) if "filter" in body else None
    ids = [] if where is not None else point_ids(body)
    own = await plain(parts.searcher, call.name)
    if own is not None:
        await (parts.searcher.store.delete_where(own.target, where) if where is not None
               else parts.searcher.store.delete(own.target, ids))
        return Reply({"operation_id": 0, "status": "completed"})
    rollout = parts.searcher.rollout(call.name)
    if where is not None:
        await parts.ingestor.delete_where(rollout, where)
    for doc_id in ids:
        with contextlib.suppress(DocumentNotFound):  # already gone
            await parts.ingestor.delete(rollout, doc_id)
    return Reply({"operation_id": 0, "status": "completed"})


async def _routed(call: Call) -> Version:
    """The version this caller reads: its routed one, or the application's own collection."""
    searcher = call.parts.searcher
    own = await plain(searcher, call.name)
    if own is not None:
        return own.version
    return searcher.route(call.name, affinity(call), random_key())


async def retrieve(call: Call) -> Reply:
    body = call.decoded(dict[str, Any])
    result = await _records(call, point_ids(body, "ids"), body.get("with_payload"),
                            body.get("with_vector", body.get("with_vectors")))
    return Reply(result, (await _routed(call)).name, _max_answer(call))


async def retrieve_one(call: Call) -> Reply:
    raw = call.key
    doc_id = canonical_id(int(raw) if raw.isascii() and raw.isdigit() else raw)
    found = await _records(call, [doc_id], True, None)
    if not found:
        raise DocumentNotFound(call.name, doc_id)
    return Reply(found[0], (await _routed(call)).name)


async def _records(call: Call, ids: list[int | str], with_payload: Any,
                   with_vector: Any) -> list[dict[str, Any]]:
    vectors = wants_vector(with_vector)
    selector = read_selector(with_payload)
    version = await _routed(call)
    store = call.parts.searcher.store
    if await store.describe(version.target) is None:  # nothing written yet: no point
        return []
    stored = await store.retrieve(version.target, [point_id(i, version) for i in ids],
                                  vectors=vectors)
    return [record(doc_id_of(point), point.payload, selector, _shown(call, point, version))
            for point in stored]


async def scroll(call: Call) -> Reply:
    body = call.decoded(dict[str, Any])
    if body.get("order_by") is not None:
        raise RuleError("order_by", "is not served yet through embedshift")
    vectors = wants_vector(body.get("with_vector", body.get("with_vectors")))
    limit = body.get("limit", 10)
    bound = max(_max_limit(call), 10_000)
    if not isinstance(limit, int) or isinstance(limit, bool) or not 1 <= limit <= bound:
        raise RuleError("limit", f"must be an integer from 1 to {bound}")
    selector = read_selector(body.get("with_payload"))
    offset = read_offset(body.get("offset"))
    where = parse_filter(body.get("filter"))
    version = await _routed(call)
    store = call.parts.searcher.store
    # offsets speak the writer's ids, as every answer does: the page after the last is read
    # one point deeper, and that point's id is where the next page starts
    start = None if offset is None else point_id(offset, version)
    points, _ = await store.scroll(version.target, start, limit + 1, vectors=vectors,
                                   query_filter=where) \
        if await store.describe(version.target) is not None else ([], None)
    after = doc_id_of(points[limit]) if len(points) > limit else None
    return Reply({"points": [record(doc_id_of(p), p.payload, selector,
                                    _shown(call, p, version)) for p in points[:limit]],
                  "next_page_offset": after}, version.name, _max_answer(call))


async def count(call: Call) -> Reply:
    body = call.decoded(dict[str, Any])
    where = parse_filter(body.get("filter"))
    version = await _routed(call)
    store = call.parts.searcher.store
    written = await store.describe(version.target) is not None  # else nothing yet: 0
    return Reply({"count": await store.count(version.target, where) if written else 0},
                 version.name)


async def _change_payload(call: Call, kind: str) -> Reply:
    """A payload change, in every version of an alias or in the application's collection."""
    parts = call.parts
    change = read_payload_change(kind, call.decoded(dict[str, Any]))
    own = await plain(parts.searcher, call.name)
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
            parts.searcher.rollout(call.name), change)
    return Reply({"operation_id": 0, "status": "completed"})


async def set_payload(call: Call) -> Reply:
    return await _change_payload(call, "set")


async def overwrite_payload(call: Call) -> Reply:
    return await _change_payload(call, "overwrite")


async def delete_payload(call: Call) -> Reply:
    return await _change_payload(call, "delete")


async def clear_payload(call: Call) -> Reply:
    return await _change_payload(call, "clear")


async def query_groups(call: Call) -> Reply:
    grouping = read_groups(call.decoded(GroupsBody), _max_limit(call))
    answered = await _answered(call, grouping.ask)
    return Reply({"groups": groups_of(answered.hits, grouping, answered.version)},
                 answered.served_by or None)


async def recommend(call: Call) -> Reply:
    """The legacy ``points/recommend``: examples by id or vector, the average-vector strategy."""
    body = call.decoded(dict[str, Any])
    examples = {key: body.pop(key) for key in ("positive", "negative", "strategy")
                if key in body}
    try:
        query_body = msgspec.convert({**body, "query": {"recommend": examples}}, QueryBody)
    except msgspec.ValidationError as exc:
        raise rule_error(str(exc)) from None
    [(result, version)] = await _each(call, [read_query(query_body, _max_limit(call))])
    return Reply(result["points"], version or None)
