"""Qdrant's own engine in-process (qdrant-edge): one shard per collection under a folder, real
HNSW and WAL.

Every engine call, shard loading and the sidecar file included, runs in a small thread pool, never
on the event loop. The sidecar (``embedshift-collection.json``) records what the engine does not:
the model id the collection was encoded with, its metric and its vector name. Engine errors
become BackendError; filters it cannot express, RuleError.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import queue
import shutil
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, cast

import qdrant_edge as edge
from qdrant_client import models

from proxy.vectors.base import (
    ANSWER_EXCLUDES,
    ANSWER_ID_ONLY,
    DISTANCES,
    CollectionInfo,
    Fusion,
    Hit,
    Named,
    Nearest,
    PointId,
    PointIn,
    Sparse,
    Stage,
    Stored,
    VectorLike,
    VectorsConfig,
    backend_errors,
    collection_vectors,
    floats,
    hit,
    no_vector,
    searched,
    stored,
    vector_to_add,
    with_target,
)
from rollout_rules.errors import BackendError, RuleError
from rollout_rules.model import Carried, Target, Version

SIDECAR = "embedshift-collection.json"
ANSWER_PAYLOAD = edge.PayloadSelector.Exclude(ANSWER_EXCLUDES)
"""What a search answer carries: the payload without our envelope (the source text, which can be
long), left in the engine rather than converted and then dropped; the document id stays."""
ANSWER_ID_ONLY_PAYLOAD = edge.PayloadSelector.Include(ANSWER_ID_ONLY)


class EdgeStore:
    """Qdrant's engine in-process: one qdrant-edge shard per collection under ``root``."""

    def __init__(self, root: Path, threads: int = 2, search_threads: int = 1) -> None:
        """``threads`` run engine calls off the event loop; ``search_threads`` is each shard's
        own search pool, which reads segments in parallel. One suits small shards: on the demo
        shard (300 points, one segment) a query took 66 µs through a pool of two threads and
        25 µs on the calling thread; a large shard of many segments may want more."""
        self.root = root
        self.search_threads = search_threads
        self._shards: dict[str, edge.EdgeShard] = {}
        self._opening = threading.Lock()  # one thread creates, loads or drops a shard at a time
        self._pool = Lane(threads, "qdrant-edge")

    async def _call(self, fn: Any, *args: Any) -> Any:
        return await self._pool.run(fn, *args)

    async def _shard(self, collection: str) -> edge.EdgeShard:
        """The open shard; loading one reads its segments from disk, so it runs in the pool."""
        shard = self._shards.get(collection)
        if shard is None:
            with backend_errors(collection, "loading the shard"):
                shard = await self._call(self._load, collection)
        return shard

    def _load(self, collection: str) -> edge.EdgeShard:
        with self._opening:
            return self._load_locked(collection)

    def _load_locked(self, collection: str) -> edge.EdgeShard:
        shard = self._shards.get(collection)  # another call may have loaded it meanwhile
        if shard is None:
            meta = self._sidecar(collection)
            if meta is None:
                raise BackendError(f"collection {collection} does not exist in {self.root}",
                                   public=f"collection {collection} does not exist")
            shard = self._shards[collection] = edge.EdgeShard.load(
                str(self.root / collection), self._config(meta["vectors"], meta.get("sparse")))
        return shard

    def _sidecar(self, collection: str) -> dict[str, Any] | None:
        """What the engine does not record: each vector's size, metric and the model that
        encoded it (a sidecar of one unnamed or named vector, as first written, is read as
        such)."""
        path = self.root / collection / SIDECAR
        if not path.exists():
            return None
        meta = cast(dict[str, Any], json.loads(path.read_text()))
        if "vectors" not in meta:
            meta = {"vectors": {meta["vector_name"] or "": {
                key: meta[key] for key in ("dimensions", "metric", "model_id")}}}
        return meta

    def _config(self, vectors: dict[str, dict[str, Any]],
                sparse: dict[str, str | None] | None = None) -> edge.EdgeConfig:
        params = {name: edge.EdgeVectorParams(size=spec["dimensions"], distance=getattr(
            edge.Distance, DISTANCES[spec["metric"]])) for name, spec in vectors.items()}
        sparse_params = {name: edge.EdgeSparseVectorParams(
            modifier=edge.Modifier.Idf if modifier == "idf" else None)
            for name, modifier in (sparse or {}).items()}
        return edge.EdgeConfig(vectors=params, sparse_vectors=sparse_params or None,
                               max_search_threads=self.search_threads)

    async def create(self, target: Target, config: VectorsConfig) -> None:
        meta = {"vectors": {name: {"dimensions": size, "metric": metric, "model_id": None}
                            for name, (size, metric) in config.dense.items()},
                "sparse": config.sparse, "single": config.single}
        with backend_errors(target.collection, "creating the collection"):
            await self._call(self._create_own, target.collection, meta)

    def _create_own(self, collection: str, meta: dict[str, Any]) -> None:
        with self._opening:
            if self._sidecar(collection) is not None:
                raise BackendError(f"collection {collection} already exists")
            path = self.root / collection
            path.mkdir(parents=True, exist_ok=True)
            self._shards[collection] = edge.EdgeShard.create(
                str(path), self._config(meta["vectors"], meta["sparse"]))
            _write_sidecar(path, meta)

    async def query(self, target: Target, stage: Stage, with_payload: bool) -> list[Hit]:
        request = edge.QueryRequest(
            limit=stage.limit, query=_edge_query(stage.query),
            prefetches=[_edge_prefetch(p) for p in stage.prefetch] or None,
            with_payload=ANSWER_PAYLOAD if with_payload else ANSWER_ID_ONLY_PAYLOAD,
            filter=to_edge_filter(with_target(stage.filter, target)),
            score_threshold=stage.score_threshold)
        shard = await self._shard(target.collection)
        with backend_errors(target.collection, "query"):
            points = await self._call(shard.query, request)
        return [hit(p, with_payload) for p in points]

    async def search(self, target: Target, vector: VectorLike, limit: int,
                     query_filter: models.Filter | None, with_payload: bool) -> list[Hit]:
        request = edge.QueryRequest(
            limit=limit,
            with_payload=ANSWER_PAYLOAD if with_payload else ANSWER_ID_ONLY_PAYLOAD,
            query=edge.Query.Nearest(floats(vector), using=target.vector_name),
            filter=to_edge_filter(with_target(query_filter, target)))
        shard = await self._shard(target.collection)
        with backend_errors(target.collection, "search"):
            points = await self._call(shard.query, request)
        return [hit(p, with_payload) for p in points]

    async def ensure_collection(self, target: Target, version: Version,
                                siblings: Sequence[Version] = (), like: Target | None = None,
                                carried: Mapping[str, Carried] | None = None) -> None:
        """``like`` has nothing to give here: an embedded shard has no shards, replicas or
        write consistency of its own, and its index settings are embedshift's."""
        with backend_errors(target.collection, "creating the collection"):
            await self._call(self._create, target, version, siblings, carried or {})

    async def creation(self, target: Target, version: Version, siblings: Sequence[Version] = (),
                       like: Target | None = None,
                       carried: Mapping[str, Carried] | None = None) -> dict[str, Any]:
        """Nothing to choose: one shard in this process, embedshift's own index settings."""
        return {}

    def _create(self, target: Target, version: Version, siblings: Sequence[Version],
                carried: Mapping[str, Carried]) -> None:
        """Two writers creating one collection at once (two backfill workers' first batches)
        must not open two shards on one folder: the lock makes the second see the first's."""
        with self._opening:
            self._create_locked(target, version, siblings, carried)

    def _create_locked(self, target: Target, version: Version,
                       siblings: Sequence[Version], carried: Mapping[str, Carried]) -> None:
        path = self.root / target.collection
        existing = self._sidecar(target.collection)
        if existing is not None:
            if vector_to_add(target, version, existing["vectors"]):
                self._add_vector(target, version, existing)
            return
        vectors = collection_vectors(version, siblings)
        vectors.update({name: {"dimensions": c.size, "metric": c.metric, "model_id": None}
                        for name, c in carried.items() if not c.sparse})
        sparse: dict[str, str | None] = {name: c.modifier for name, c in carried.items()
                                         if c.sparse}
        path.mkdir(parents=True, exist_ok=True)
        shard = self._shards[target.collection] = edge.EdgeShard.create(
            str(path), self._config(vectors, sparse))
        for key in {k for v in (version, *siblings) for k in v.target.payload_match}:
            # versions sharing a collection filter on these
            shard.update(edge.UpdateOperation.create_field_index(
                key, edge.PayloadSchemaType.Keyword))
        _write_sidecar(path, {"vectors": vectors, **({"sparse": sparse} if sparse else {})})

    def _add_vector(self, target: Target, version: Version, meta: dict[str, Any]) -> None:
        """The version's named vector, added to the shard in place (its points get one as
        they are written), then recorded; under the lock, as creation is."""
        name = target.vector_name or ""
        shard = self._load_locked(target.collection)
        shard.update(edge.UpdateOperation.create_dense_vector(
            name, version.dimensions, getattr(edge.Distance, DISTANCES[version.metric])))
        meta["vectors"][name] = {"dimensions": version.dimensions, "metric": version.metric,
                                 "model_id": version.model}
        _write_sidecar(self.root / target.collection, meta)

    async def drop_vector(self, target: Target) -> None:
        with backend_errors(target.collection, "removing a vector"):
            await self._call(self._drop_vector, target)

    def _drop_vector(self, target: Target) -> None:
        with self._opening:
            meta = self._sidecar(target.collection)
            name = target.vector_name or ""
            if meta is None or name not in meta["vectors"] or not name:
                return
            shard = self._load_locked(target.collection)
            shard.update(edge.UpdateOperation.delete_vector_name(name))
            del meta["vectors"][name]
            _write_sidecar(self.root / target.collection, meta)

    async def upsert(self, target: Target, points: Sequence[PointIn]) -> None:
        name = target.vector_name or ""
        shard = await self._shard(target.collection)
        with backend_errors(target.collection, "upsert"):
            batch = [edge.Point(p.id, _edge_vectors(p, name) if p.named else {name: p.vector},
                                {**p.payload, **target.payload_match}) for p in points]
            await self._call(shard.update, edge.UpdateOperation.upsert_points(batch))

    async def optimize(self, target: Target) -> None:
        """Build the HNSW index now (the engine otherwise waits for its thresholds)."""
        shard = await self._shard(target.collection)
        with backend_errors(target.collection, "optimize"):
            await self._call(shard.optimize)

    async def collections(self) -> list[str]:
        def listed() -> list[str]:
            if not self.root.is_dir():
                return []
            return sorted(p.name for p in self.root.iterdir() if (p / SIDECAR).exists())

        with backend_errors("*", "listing collections"):
            found: list[str] = await self._call(listed)
        return found

    async def describe(self, target: Target) -> CollectionInfo | None:
        with backend_errors(target.collection, "describing the collection"):
            meta = await self._call(self._sidecar, target.collection)
            if meta is None:
                return None
            spec = meta["vectors"].get(target.vector_name or "")
            info = await self._call((await self._shard(target.collection)).info)
        config = VectorsConfig(
            dense={name: (v["dimensions"], v["metric"]) for name, v in meta["vectors"].items()},
            sparse=meta.get("sparse", {}),
            single=meta.get("single", set(meta["vectors"]) == {""}))
        if spec is None:
            return CollectionInfo(name=target.collection, dimensions=0, metric="",
                                  model_id=None, points=info.points_count,
                                  missing=no_vector(target, meta["vectors"]), config=config)
        # a shared collection holds several models' points: each point's envelope names its own
        return CollectionInfo(name=target.collection, dimensions=spec["dimensions"],
                              metric=spec["metric"],
                              model_id=None if target.payload_match else spec["model_id"],
                              points=info.points_count, config=config)

    async def scroll(self, target: Target, offset: PointId | None, limit: int,
                     fields: Sequence[str] | None = None, vectors: bool = False, *,
                     query_filter: models.Filter | None = None
                     ) -> tuple[list[Stored], PointId | None]:
        request = edge.ScrollRequest(offset=offset, limit=limit, with_vector=vectors,
                                     with_payload=_payload(fields),
                                     filter=to_edge_filter(with_target(query_filter, target)))
        shard = await self._shard(target.collection)
        with backend_errors(target.collection, "scroll"):
            records, following = await self._call(shard.scroll, request)
        return [stored(r, target.vector_name) for r in records], _point_id(following)

    async def drop(self, target: Target) -> None:
        with backend_errors(target.collection, "dropping the collection"):
            await self._call(self._drop, target.collection)

    def _drop(self, collection: str) -> None:
        with self._opening:
            self._drop_locked(collection)

    def _drop_locked(self, collection: str) -> None:
        shard = self._shards.pop(collection, None)
        if shard is not None:
            shard.close()
        path = self.root / collection
        if path.exists():
            shutil.rmtree(path)

    async def retrieve(self, target: Target, ids: Sequence[PointId],
                       fields: Sequence[str] | None = None, vectors: bool = False
                       ) -> list[Stored]:
        if not ids:
            return []
        shard = await self._shard(target.collection)
        with backend_errors(target.collection, "retrieve"):
            records = await self._call(shard.retrieve, list(ids), _payload(fields), vectors)
        return [stored(r, target.vector_name) for r in records]

    async def count(self, target: Target, query_filter: models.Filter | None = None) -> int:
        request = edge.CountRequest(exact=True, filter=to_edge_filter(
            with_target(query_filter, target)))
        shard = await self._shard(target.collection)
        with backend_errors(target.collection, "count"):
            return int(await self._call(shard.count, request))

    async def delete_where(self, target: Target, query_filter: models.Filter) -> None:
        where = to_edge_filter(with_target(query_filter, target))
        assert where is not None, "a filter was given"
        shard = await self._shard(target.collection)
        with backend_errors(target.collection, "delete"):
            await self._call(shard.update, edge.UpdateOperation.delete_points_by_filter(where))

    async def delete(self, target: Target, ids: Sequence[PointId]) -> None:
        shard = await self._shard(target.collection)
        with backend_errors(target.collection, "delete"):
            await self._call(shard.update, edge.UpdateOperation.delete_points(list(ids)))

    async def set_payload(self, target: Target, payload: dict[str, Any], *,
                          ids: Sequence[PointId] | None = None,
                          query_filter: models.Filter | None = None) -> None:
        await self._update(target, lambda: (
            edge.UpdateOperation.set_payload(list(ids), payload) if ids is not None
            else edge.UpdateOperation.set_payload_by_filter(_where(query_filter, target),
                                                            payload)), "set payload")

    async def delete_payload(self, target: Target, keys: Sequence[str], *,
                             ids: Sequence[PointId] | None = None,
                             query_filter: models.Filter | None = None) -> None:
        await self._update(target, lambda: (
            edge.UpdateOperation.delete_payload(list(ids), list(keys)) if ids is not None
            else edge.UpdateOperation.delete_payload_by_filter(_where(query_filter, target),
                                                               list(keys))), "delete payload")

    async def index_field(self, target: Target, field: str, schema: str) -> None:
        kind = getattr(edge.PayloadSchemaType, schema.capitalize())
        await self._update(target, lambda: edge.UpdateOperation.create_field_index(field, kind),
                           "index a payload field")

    async def drop_index(self, target: Target, field: str) -> None:
        if field in await self.indexed_fields(target):
            await self._update(target, lambda: edge.UpdateOperation.delete_field_index(field),
                               "drop a payload index")

    async def indexed_fields(self, target: Target) -> dict[str, str]:
        shard = await self._shard(target.collection)
        with backend_errors(target.collection, "reading its payload indexes"):
            info = await self._call(shard.info)
        return {field: str(index.data_type).rsplit(".", 1)[-1].lower()
                for field, index in info.payload_schema.items()}

    async def _update(self, target: Target, operation: Callable[[], Any], action: str) -> None:
        """``operation`` built and applied inside ``backend_errors``: the engine refuses some
        arguments (a payload path it cannot parse) as it builds the operation."""
        shard = await self._shard(target.collection)
        with backend_errors(target.collection, action):
            await self._call(shard.update, operation())

    async def close(self) -> None:
        for shard in self._shards.values():
            shard.close()
        self._shards.clear()
        self._pool.shutdown()


class Lane:
    """Threads that run the engine's calls for the event loop, each result handed back by one
    ``call_soon_threadsafe``: the loop's share of a call is a future and a queue put, where
    ``run_in_executor``'s is a concurrent future, an asyncio future wrapping it and the
    callbacks chaining the two (about a tenth of the loop's CPU per new query)."""

    def __init__(self, threads: int, name: str) -> None:
        self._jobs: queue.SimpleQueue[tuple[Any, ...] | None] = queue.SimpleQueue()
        self._closed = False
        self._threads = [threading.Thread(target=self._work, name=f"{name}-{n}", daemon=True)
                         for n in range(threads)]
        for thread in self._threads:
            thread.start()

    async def run(self, fn: Any, *args: Any) -> Any:
        if self._closed:  # as an executor refuses: nothing would ever answer
            raise RuntimeError("the engine's threads are stopped")
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._jobs.put((loop, future, fn, args))
        return await future

    def _work(self) -> None:
        while (job := self._jobs.get()) is not None:
            loop, future, fn, args = job
            try:
                outcome = (True, fn(*args))
            except BaseException as exc:  # noqa: BLE001 - handed to the caller, as it was raised
                outcome = (False, exc)
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile: nobody waits
                loop.call_soon_threadsafe(_settle, future, *outcome)

    def shutdown(self) -> None:
        """Let the calls queued so far finish, then stop the threads."""
        if self._closed:
            return
        self._closed = True
        for _ in self._threads:
            self._jobs.put(None)
        for thread in self._threads:
            thread.join()


def _settle(future: asyncio.Future[Any], ok: bool, value: Any) -> None:
    """On the loop: the call's result or exception, unless its caller gave up (a deadline)."""
    if future.done():
        return
    if ok:
        future.set_result(value)
    else:
        future.set_exception(value)


def _write_sidecar(path: Path, meta: dict[str, Any]) -> None:
    """Written whole and renamed: a reader in another thread (describe, which takes no lock)
    must never see the file half-written."""
    partial = path / f".{SIDECAR}.tmp"
    partial.write_text(json.dumps(meta))
    partial.replace(path / SIDECAR)


def _edge_vector(vector: Named) -> Any:
    if isinstance(vector, Sparse):
        return edge.SparseVector(list(vector.indices), list(vector.values))
    return vector


def _edge_vectors(point: PointIn, name: str) -> dict[str, Any]:
    vectors = {key: _edge_vector(v) for key, v in point.named.items()}
    if point.vector:
        vectors[name] = point.vector
    return vectors


def _edge_query(query: Nearest | Fusion) -> Any:
    if isinstance(query, Nearest):
        return edge.Query.Nearest(_edge_vector(searched(query.vector)), using=query.using)
    if query.method == "dbsf":
        return edge.Fusion.Dbsf()
    return edge.Fusion.Rrf(k=query.k if query.k is not None else RRF_K, weights=query.weights)


RRF_K = 2
"""Qdrant's RRF constant when a query names none (``{"fusion": "rrf"}``): the server's default,
which qdrant-client's local mode shares."""


def _edge_prefetch(stage: Stage) -> Any:
    return edge.Prefetch(limit=stage.limit, query=_edge_query(stage.query),
                         prefetches=[_edge_prefetch(p) for p in stage.prefetch] or None,
                         filter=to_edge_filter(stage.filter),
                         score_threshold=stage.score_threshold)


def _where(query_filter: models.Filter | None, target: Target) -> Any:
    """The engine's filter for the version's points matching ``query_filter`` (required)."""
    if query_filter is None:
        raise RuleError("filter", "name the points by id or by a filter")
    return to_edge_filter(with_target(query_filter, target))


def _payload(fields: Sequence[str] | None) -> Any:
    return True if fields is None else edge.PayloadSelector.Include(list(fields))


def _point_id(value: Any) -> PointId | None:
    return None if value is None else value if isinstance(value, int) else str(value)


def to_edge_filter(query_filter: models.Filter | None) -> edge.Filter | None:
    """qdrant-client's Filter as the embedded engine's; RuleError for what it cannot express."""
    if query_filter is None:
        return None
    try:
        return _edge_filter(query_filter)
    except (ValueError, TypeError) as exc:  # the engine's own checks (e.g. a bad key path)
        raise RuleError("filter", f"the embedded engine refused it: {exc}") from exc


def _edge_filter(query_filter: models.Filter) -> edge.Filter:
    def conditions(items: Any) -> list[Any] | None:
        if items is None:
            return None
        listed = items if isinstance(items, list) else [items]
        return [_edge_condition(c) for c in listed]

    return edge.Filter(must=conditions(query_filter.must), should=conditions(query_filter.should),
                       must_not=conditions(query_filter.must_not))


def _edge_condition(condition: Any) -> Any:
    if isinstance(condition, models.Filter):
        return _edge_filter(condition)
    if isinstance(condition, models.HasIdCondition):
        return edge.HasIdCondition(set(condition.has_id))
    if isinstance(condition, models.IsEmptyCondition):
        return edge.IsEmptyCondition(condition.is_empty.key)
    if isinstance(condition, models.IsNullCondition):
        return edge.IsNullCondition(condition.is_null.key)
    if isinstance(condition, models.FieldCondition):
        return edge.FieldCondition(key=condition.key, match=_edge_match(condition.match),
                                   range=_edge_range(condition.range))
    raise RuleError("filter", f"{type(condition).__name__} is not supported by the embedded "
                              "engine")


def _edge_match(match: Any) -> Any:
    if match is None:
        return None
    if isinstance(match, models.MatchValue):
        return edge.MatchValue(match.value)
    if isinstance(match, models.MatchAny):
        return edge.MatchAny(cast(list[str] | list[int], list(match.any)))
    if isinstance(match, models.MatchExcept):
        return edge.MatchExcept(cast(list[str] | list[int], list(match.except_)))
    if isinstance(match, models.MatchText):
        return edge.MatchText(match.text)
    raise RuleError("filter", f"{type(match).__name__} is not supported by the embedded engine")


def _edge_range(bounds: Any) -> Any:
    if bounds is None:
        return None
    if not isinstance(bounds, models.Range):
        raise RuleError("filter", "only numeric ranges are supported by the embedded engine")
    return edge.RangeFloat(gte=bounds.gte, gt=bounds.gt, lte=bounds.lte, lt=bounds.lt)
