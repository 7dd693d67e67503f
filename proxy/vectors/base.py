"""What every vector store shares: the protocol, the points and hits it moves, the envelope check
and Qdrant's filter format.

Filters arrive as Qdrant's JSON and are validated once with qdrant-client's models (the one
well-kept definition of that format); a version's ``payload_match`` joins them as ``must``
conditions. Adapters convert their library's errors with ``backend_errors`` (BackendError naming
the collection) and refuse what they cannot express with RuleError.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, NamedTuple, Protocol

import msgspec
import numpy as np
from numpy.typing import NDArray
from pydantic import ValidationError
from qdrant_client import models

from rollout_rules.errors import BackendError, EmbedshiftError, RuleError
from rollout_rules.model import Carried, Target, Version

PointId = int | str
VectorLike = Sequence[float] | NDArray[np.float32]
RESERVED = "_embedshift"
"""The payload key under which a point carries its document id, source text and envelope (see
``proxy.ingest.documents``); search answers leave it out and speak the document id."""
ENVELOPE = ("model", "version", "dimensions", "metric", "normalized")
"""What a point records of the version that encoded it."""
DOC_ID = "doc_id"
OWN_FIELDS = (DOC_ID, "text", *ENVELOPE)
"""Every field under ``RESERVED``."""
ANSWER_EXCLUDES = [f"{RESERVED}.{name}" for name in OWN_FIELDS if name != DOC_ID]
"""What a search answer asks the engine to leave out: all of our own fields but the document
id (the source text can be long and is never shown), so the id comes back with the hit."""
ANSWER_ID_ONLY = [f"{RESERVED}.{DOC_ID}"]
"""What a search answer without payload asks for: the document id alone."""
DISTANCES = {"cosine": "Cosine", "dot": "Dot", "euclid": "Euclid", "manhattan": "Manhattan"}


class Hit(msgspec.Struct, frozen=True):
    """A search answer's hit: the id the document was written with (string or integer; the
    engine's point id only for a point embedshift did not write), its score and payload."""

    id: PointId
    score: float
    payload: dict[str, Any] | None = None


class PointIn(msgspec.Struct, frozen=True):
    """A point to write: its vector under the target's name (none: empty) and, beside it,
    vectors under other names (an application's own collection of several)."""

    id: PointId
    vector: list[float]
    payload: dict[str, Any] = msgspec.field(default_factory=dict)
    named: dict[str, Named] = msgspec.field(default_factory=dict)


class Stored(msgspec.Struct, frozen=True):
    """A stored point as read back: its id and (the asked-for part of) its payload; its vector
    under the target's name, and when it has several, all of them by name (sparse ones as
    ``{indices, values}``)."""

    id: PointId
    payload: dict[str, Any]
    vector: list[float] | None = None
    named: dict[str, Any] | None = None


class Sparse(NamedTuple):
    """A sparse vector: the dimensions it has a value in, and those values."""

    indices: list[int]
    values: list[float]


Named = list[float] | Sparse
"""A named vector of a point or a query: dense or sparse."""


class Text(NamedTuple):
    """Text a query searches by, not yet encoded: the request path encodes it with the model
    of the version that answers, before the stage reaches a store."""

    text: str


class Nearest(NamedTuple):
    """The points nearest a vector, in the collection's vector ``using`` ("": the unnamed)."""

    using: str
    vector: Named | Text


def searched(vector: Named | Text) -> Named:
    """A stage's vector as a store searches it; text must have been encoded before."""
    if isinstance(vector, Text):
        raise RuleError("query", "text in a staged query is encoded by an alias's version: "
                                 "this collection has no model")
    return vector


class Fusion(NamedTuple):
    """Fuse the prefetches' hits: ``rrf`` (reciprocal rank, ``k`` and ``weights`` as Qdrant's
    ``{"rrf": {...}}``) or ``dbsf`` (distribution-based score fusion)."""

    method: str
    k: int | None = None
    weights: list[float] | None = None


class Stage(NamedTuple):
    """One stage of a query as Qdrant runs it: its prefetches first (each a stage), then its
    own query over what they found (or over the collection when there are none)."""

    query: Nearest | Fusion
    limit: int
    prefetch: tuple[Stage, ...] = ()
    filter: models.Filter | None = None
    score_threshold: float | None = None


class VectorsConfig(msgspec.Struct, frozen=True, kw_only=True):
    """A collection's vectors as its application created it: dense ones by name (size,
    metric), sparse ones by name (their modifier: ``idf`` or None), and whether the dense one
    was given as one unnamed vector rather than a map (Qdrant answers as it was created)."""

    dense: dict[str, tuple[int, str]]
    sparse: dict[str, str | None] = msgspec.field(default_factory=dict)
    single: bool = False


class CollectionInfo(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    dimensions: int
    metric: str
    model_id: str | None
    points: int
    missing: str | None = None  # the collection exists without the version's vector: why
    config: VectorsConfig | None = None  # every vector, as the collection was created


class VectorStore(Protocol):
    async def search(self, target: Target, vector: VectorLike, limit: int,
                     query_filter: models.Filter | None, with_payload: bool) -> list[Hit]: ...

    async def ensure_collection(self, target: Target, version: Version,
                                siblings: Sequence[Version] = (), like: Target | None = None,
                                carried: Mapping[str, Carried] | None = None) -> None:
        """Create the version's collection unless it exists, declaring the vectors of the
        ``siblings`` that share it too, with the settings of ``like``'s collection (stable's:
        shards, replicas, write consistency, on-disk storage, HNSW, quantization) where the
        engine has such settings. One that exists without the version's named vector has it
        added in place (a version declared after the collection was written); BackendError
        when it holds a vector of that name of another size or metric. A new one declares the
        rule's ``carried`` vectors too."""
        ...

    async def creation(self, target: Target, version: Version, siblings: Sequence[Version] = (),
                       like: Target | None = None,
                       carried: Mapping[str, Carried] | None = None) -> dict[str, Any]:
        """What ``ensure_collection`` would ask the engine for (``plan`` shows it)."""
        ...

    async def create(self, target: Target, config: VectorsConfig) -> None:
        """Create an application's own collection with the vectors it asked for."""
        ...

    async def query(self, target: Target, stage: Stage, with_payload: bool) -> list[Hit]:
        """The hits of a staged query (prefetches, fusion, named and sparse vectors), run by
        the engine in the target's collection."""
        ...

    async def upsert(self, target: Target, points: Sequence[PointIn]) -> None: ...

    async def optimize(self, target: Target) -> None:
        """Index what was written now rather than when the engine's thresholds say."""
        ...

    async def describe(self, target: Target) -> CollectionInfo | None: ...

    async def scroll(self, target: Target, offset: PointId | None, limit: int,
                     fields: Sequence[str] | None = None, vectors: bool = False, *,
                     query_filter: models.Filter | None = None
                     ) -> tuple[list[Stored], PointId | None]:
        """A page of the version's points (matching ``query_filter``) in id order, and the
        offset of the next page (None after the last); ``fields`` picks payload keys (None:
        the whole payload)."""
        ...

    async def drop(self, target: Target) -> None:
        """Delete the collection (every version in it); nothing if it does not exist."""
        ...

    async def retrieve(self, target: Target, ids: Sequence[PointId],
                       fields: Sequence[str] | None = None, vectors: bool = False
                       ) -> list[Stored]:
        """The version's points among ``ids`` (absent ones are left out), with their vectors
        (the version's own) if asked."""
        ...

    async def count(self, target: Target, query_filter: models.Filter | None = None) -> int:
        """How many points the version has (only its own in a shared collection), of those
        matching ``query_filter`` if given."""
        ...

    async def delete_where(self, target: Target, query_filter: models.Filter) -> None:
        """Delete the version's points that match ``query_filter``."""
        ...

    async def set_payload(self, target: Target, payload: dict[str, Any], *,
                          ids: Sequence[PointId] | None = None,
                          query_filter: models.Filter | None = None) -> None:
        """Set keys of the payload of the version's points ``ids`` (or those matching
        ``query_filter``), the other keys kept."""
        ...

    async def delete_payload(self, target: Target, keys: Sequence[str], *,
                             ids: Sequence[PointId] | None = None,
                             query_filter: models.Filter | None = None) -> None:
        """Remove ``keys`` from the payload of the version's points ``ids`` (or matching)."""
        ...

    async def drop_vector(self, target: Target) -> None:
        """Remove the target's named vector from its collection (a retired version's, in a
        collection other versions share); nothing if it has none."""
        ...

    async def collections(self) -> list[str]:
        """Every collection the store holds, by name."""
        ...

    async def index_field(self, target: Target, field: str, schema: str) -> None:
        """Build a payload index on ``field`` (a schema of ``INDEX_SCHEMAS``)."""
        ...

    async def drop_index(self, target: Target, field: str) -> None:
        """Drop the payload index on ``field``; none there is no error."""
        ...

    async def indexed_fields(self, target: Target) -> dict[str, str]:
        """The payload indexes of the version's collection: field -> schema."""
        ...

    async def delete(self, target: Target, ids: Sequence[PointId]) -> None: ...

    async def close(self) -> None: ...


def hit(point: Any, with_payload: bool) -> Hit:
    """A scored point from either engine as our Hit, under the document id it was written with
    (the point id, int or UUID as a string, when it has none). The engines were asked for
    nothing of ``RESERVED`` but the document id (``ANSWER_EXCLUDES``, ``ANSWER_ID_ONLY``): the
    contract suite checks they send nothing else."""
    payload = point.payload or {}
    own = payload.pop(RESERVED, None)
    doc_id = own.get(DOC_ID) if isinstance(own, dict) else None
    if not isinstance(doc_id, (int, str)):
        doc_id = point.id if isinstance(point.id, int) else str(point.id)
    return Hit(doc_id, point.score, payload if with_payload else None)


def id_key(doc_id: PointId) -> str:
    """A document id as text that keeps its kind (JSON: ``9010`` and ``"9010"`` differ), for
    records kept by id outside the engine (popularity)."""
    return msgspec.json.encode(doc_id).decode()


def id_of_key(key: str) -> PointId | None:
    """``id_key`` read back; None for a key that is not one (recorded by an older version)."""
    try:
        value = msgspec.json.decode(key)
    except msgspec.DecodeError:
        return None
    return value if isinstance(value, (int, str)) and not isinstance(value, bool) else None


async def scroll_all(store: VectorStore, target: Target, fields: Sequence[str] | None = None,
                     vectors: bool = False, page: int = 1000) -> AsyncIterator[Stored]:
    """Every point of a version, page by page (``scroll`` until it says there is no more)."""
    offset: PointId | None = None
    while True:
        points, offset = await store.scroll(target, offset, page, fields, vectors)
        for point in points:
            yield point
        if offset is None:
            return


def stored(point: Any, vector_name: str | None = None) -> Stored:
    """A record from either engine as our Stored (ids: int, or UUIDs as strings); a point of
    several vectors read without a name has them all, by name."""
    vector, named = point.vector, None
    if isinstance(vector, dict):
        if set(vector) != {vector_name or ""}:
            named = {name: _named(v) for name, v in vector.items()}
        vector = vector.get(vector_name or "")
    return Stored(point.id if isinstance(point.id, int) else str(point.id), point.payload or {},
                  None if vector is None else list(vector), named)


def carried_of(point: Stored, carried: Mapping[str, Carried]) -> dict[str, Named]:
    """A stored point's carried vectors (those it holds), to be written beside a new one."""
    found: dict[str, Named] = {}
    for name in carried:
        value = (point.named or {}).get(name)
        if isinstance(value, dict):
            found[name] = Sparse(list(value["indices"]), list(value["values"]))
        elif value is not None:
            found[name] = list(value)
    return found


def _named(vector: Any) -> Any:
    """A vector from either engine as Qdrant's JSON: a list, or ``{indices, values}``."""
    if hasattr(vector, "indices"):
        return {"indices": list(vector.indices), "values": list(vector.values)}
    return list(vector)


def floats(vector: VectorLike) -> list[float]:
    """The vector as the engine takes it; ``tolist`` is 4x faster than a Python float map."""
    return vector.tolist() if isinstance(vector, np.ndarray) else [float(x) for x in vector]


@contextmanager
def backend_errors(collection: str, action: str) -> Iterator[None]:
    """Any library error inside becomes a BackendError naming the collection; our own errors
    (a RuleError for a filter, a BackendError already raised) pass as they are."""
    try:
        yield
    except EmbedshiftError:
        raise
    except Exception as exc:
        raise BackendError(f"{action} in {collection} failed: {exc}",
                           public=f"{action} in {collection} failed") from exc


FIELD_CONDITIONS = ("match", "range")
"""What a field condition may test, on every store alike: geo, values_count and datetime
conditions are refused rather than answered differently by different engines."""


MAX_FILTER_CONDITIONS = 64
"""Conditions (and nested filters) one filter may hold. Each costs the engine a look at every
point it cannot find by a payload index, and the embedded engine holds the interpreter while it
looks: 16 conditions on 3,000 unindexed points took 44 ms, 1,000 took 1.6 s (with an index on the
field, 1,000 took 15 ms)."""


def count_conditions(raw: object, limit: int) -> int:
    """The conditions in a raw filter, nested ones included, counted without parsing it (up to
    ``limit`` and a clause more)."""
    seen, stack = 0, [raw]
    while stack and seen <= limit:
        node = stack.pop()
        if not isinstance(node, dict):
            continue
        for clause in ("must", "should", "must_not", "min_should"):
            items = node.get(clause)
            if clause == "min_should" and isinstance(items, dict):
                items = items.get("conditions")
            listed = items if isinstance(items, list) else [items] if isinstance(items, dict) \
                else []
            seen += len(listed)
            stack.extend(listed)
        nested = node.get("nested")
        if isinstance(nested, dict):
            stack.append(nested.get("filter"))
    return seen


def parse_filter(raw: object, max_conditions: int = MAX_FILTER_CONDITIONS
                 ) -> models.Filter | None:
    """A Qdrant filter from request JSON, or RuleError naming what is wrong with it (or that
    it holds more than ``max_conditions``, before any work is spent on it)."""
    if raw is None:
        return None
    if count_conditions(raw, max_conditions) > max_conditions:
        raise RuleError("filter", f"holds more than {max_conditions} conditions: index the "
                                  "fields you filter on and ask for fewer")
    try:
        parsed = models.Filter.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        # pydantic's location names union members and classes too; keep the JSON path only
        where = ".".join(str(p) for p in first["loc"] if isinstance(p, int) or
                         (str(p).replace("_", "").isalpha() and str(p).islower()))
        raise RuleError(f"filter.{where}" if where else "filter",
                        f"{first['msg']} (a Qdrant filter)") from exc
    _check_conditions(parsed, "filter")
    refuse_reserved(parsed)
    return parsed


def _conditions(query_filter: models.Filter | None, path: str) -> Iterator[tuple[str, Any]]:
    """Every condition of a filter that is not itself a filter, with where it stands
    (``filter.must.0``), through nested filters, nested conditions and min_should."""
    if query_filter is None:
        return
    for clause in ("must", "should", "must_not", "min_should"):
        items = getattr(query_filter, clause, None)
        if isinstance(items, models.MinShould):
            items = items.conditions
        listed = items if isinstance(items, list) else [] if items is None else [items]
        for i, condition in enumerate(listed):
            where = f"{path}.{clause}.{i}"
            if isinstance(condition, models.Filter):
                yield from _conditions(condition, where)
            elif isinstance(condition, models.NestedCondition):
                yield where, condition
                yield from _conditions(condition.nested.filter, f"{where}.nested.filter")
            else:
                yield where, condition


def _check_conditions(query_filter: models.Filter, path: str) -> None:
    """Each field condition tests exactly one supported thing (a key alone tests nothing)."""
    for where, condition in _conditions(query_filter, path):
        if isinstance(condition, models.FieldCondition):
            tested = [name for name, value in condition if name != "key" and value is not None]
            if len(tested) != 1 or tested[0] not in FIELD_CONDITIONS:
                raise RuleError(where, f"a condition on {condition.key!r} must test exactly "
                                       f"one of {', '.join(FIELD_CONDITIONS)} (it tests "
                                       f"{', '.join(tested) or 'nothing'})")


def refuse_reserved(query_filter: models.Filter | None, path: str = "filter") -> None:
    """RuleError when a condition reads embedshift's own fields (``RESERVED``: the source text
    and the envelope): what an answer leaves out must not be learned by filtering on it."""
    for where, condition in _conditions(query_filter, path):
        _refuse_key(_condition_key(condition), where)


def _condition_key(condition: object) -> str | None:
    if isinstance(condition, models.NestedCondition):
        return condition.nested.key
    if isinstance(condition, models.FieldCondition):
        return condition.key
    if isinstance(condition, models.IsEmptyCondition):
        return condition.is_empty.key
    if isinstance(condition, models.IsNullCondition):
        return condition.is_null.key
    return None


def _refuse_key(key: str | None, where: str) -> None:
    """A key whose first path segment is ``RESERVED``, quoted or not, is refused."""
    if key is None:
        return
    first = key.strip().lstrip('"').split('"', 1)[0].split(".", 1)[0].split("[", 1)[0]
    if first == RESERVED:
        raise RuleError(where, f"{key!r}: {RESERVED} holds embedshift's own fields and cannot "
                               "be filtered on")


def with_target(query_filter: models.Filter | None, target: Target) -> models.Filter | None:
    """The request's filter plus the version's payload match (its points in a shared
    collection); a filter reading ``RESERVED`` is refused here, at every store's boundary."""
    refuse_reserved(query_filter)
    if not target.payload_match:
        return query_filter
    pinned: list[Any] = [models.FieldCondition(key=key, match=models.MatchValue(value=value))
                         for key, value in target.payload_match.items()]
    if query_filter is None:
        return models.Filter(must=pinned)
    return models.Filter(must=[*pinned, query_filter])


def collection_vectors(version: Version, siblings: Sequence[Version] = ()
                       ) -> dict[str, dict[str, Any]]:
    """The vectors a new collection declares: one per vector name that ``version`` and the
    versions sharing its collection (``siblings``) use ("" for the unnamed one), each with its
    size, metric and the model of the first version naming it. A version declared later adds
    its vector to the collection in place (``vector_to_add``)."""
    vectors: dict[str, dict[str, Any]] = {}
    for v in (version, *siblings):
        if v.target.collection == version.target.collection:
            vectors.setdefault(v.target.vector_name or "", {
                "dimensions": v.dimensions, "metric": v.metric, "model_id": v.model})
    return vectors


def no_vector(target: Target, vectors: Mapping[str, object]) -> str:
    """Why a version cannot yet use a collection that exists without its vector."""
    held = ", ".join(repr(n) if n else "the unnamed vector" for n in vectors) or "no vector"
    wanted = repr(target.vector_name) if target.vector_name else "the unnamed vector"
    return (f"collection {target.collection} has no vector {wanted} yet (it holds {held}): "
            "the version's first write (its backfill, or ingestion) adds it")


def vector_to_add(target: Target, version: Version, vectors: Mapping[str, Any]) -> bool:
    """Whether a collection that exists must have the version's vector added in place (a
    version declared after the collection was written); BackendError when it holds a vector
    of that name the version cannot use, or lacks the unnamed one (only named vectors are
    added)."""
    spec = vectors.get(target.vector_name or "")
    if spec is None:
        if not target.vector_name:
            raise BackendError(no_vector(target, vectors) + ", but an unnamed vector cannot "
                               "be added: give the version a vector name, or a collection "
                               "of its own")
        return True
    if spec["dimensions"] != version.dimensions or spec["metric"] != version.metric:
        raise BackendError(f"collection {target.collection}'s vector "
                           f"{target.vector_name or '(unnamed)'} holds {spec['dimensions']}-d "
                           f"{spec['metric']} vectors; version {version.name} makes "
                           f"{version.dimensions}-d {version.metric} ones")
    return False


INDEX_SCHEMAS = ("keyword", "integer", "float", "bool", "geo", "datetime", "text", "uuid")
"""Payload index kinds both engines build (Qdrant's names)."""
UNRECORDED_MODEL = "embedshift/unrecorded"
"""The model recorded for a collection created without one (an application's own, created
through the Qdrant API): unknown, so nothing is held against a version that adopts it."""


def mismatches(version: Version, info: CollectionInfo) -> list[str]:
    """What differs between a version's envelope and its collection; empty when they agree."""
    if info.missing is not None:
        return [info.missing]
    problems = []
    if info.dimensions != version.dimensions:
        problems.append(f"dimensions: version {version.name} encodes {version.dimensions}, "
                        f"collection {info.name} holds {info.dimensions}")
    if info.metric != version.metric:
        problems.append(f"distance: version {version.name} wants {version.metric}, "
                        f"collection {info.name} uses {info.metric}")
    if info.model_id not in (None, UNRECORDED_MODEL) and info.model_id != version.model:
        problems.append(f"model: version {version.name} is {version.model}, collection "
                        f"{info.name} was encoded with {info.model_id}")
    return problems


