"""Vector stores behind one protocol: a Qdrant server (qdrant-client) or the embedded engine.

``ServerStore`` talks to Qdrant with qdrant-client's async client (gRPC preferred); tests point it
at qdrant-client's local mode. ``EdgeStore`` runs Qdrant's own engine in-process with qdrant-edge:
one shard per collection under the data folder, real HNSW and WAL, blocking calls kept off the
event loop in a small thread pool. Collections carry the model id they were encoded with
(collection metadata on the server, a sidecar file for the embedded engine), so start-up can refuse
a version whose encoder does not match its collection.

Filters arrive as Qdrant's JSON and are validated once with qdrant-client's models (the one
well-kept definition of that format); a version's ``payload_match`` joins them as ``must``
conditions. Errors become RuleError (a bad filter, the caller's fault) or BackendError.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Protocol, cast

import msgspec
import numpy as np
import qdrant_edge as edge
from numpy.typing import NDArray
from pydantic import ValidationError
from qdrant_client import AsyncQdrantClient, models

from rollout_rules.errors import BackendError, RuleError
from rollout_rules.model import Target, Version

PointId = int | str
VectorLike = Sequence[float] | NDArray[np.float32]
_DISTANCES = {"cosine": "Cosine", "dot": "Dot", "euclid": "Euclid", "manhattan": "Manhattan"}


class Hit(msgspec.Struct, frozen=True):
    id: PointId
    score: float
    payload: dict[str, Any] | None = None


class PointIn(msgspec.Struct, frozen=True):
    id: PointId
    vector: list[float]
    payload: dict[str, Any] = msgspec.field(default_factory=dict)


class CollectionInfo(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    dimensions: int
    metric: str
    model_id: str | None
    points: int


class VectorStore(Protocol):
    async def search(self, target: Target, vector: VectorLike, limit: int,
                     query_filter: models.Filter | None, with_payload: bool) -> list[Hit]: ...

    async def ensure_collection(self, target: Target, version: Version) -> None: ...

    async def upsert(self, target: Target, points: Sequence[PointIn]) -> None: ...

    async def describe(self, target: Target) -> CollectionInfo | None: ...

    async def close(self) -> None: ...


def _hit(point: Any, with_payload: bool) -> Hit:
    """A scored point from either engine as our Hit (ids: int, or UUIDs as strings)."""
    return Hit(point.id if isinstance(point.id, int) else str(point.id), point.score,
               point.payload if with_payload else None)


def _floats(vector: VectorLike) -> list[float]:
    """The vector as the engine takes it; ``tolist`` is 4x faster than a Python float map."""
    return vector.tolist() if isinstance(vector, np.ndarray) else [float(x) for x in vector]


def parse_filter(raw: object) -> models.Filter | None:
    """A Qdrant filter from request JSON, or RuleError naming what is wrong with it."""
    if raw is None:
        return None
    try:
        return models.Filter.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        # pydantic's location names union members and classes too; keep the JSON path only
        where = ".".join(str(p) for p in first["loc"] if isinstance(p, int) or
                         (str(p).replace("_", "").isalpha() and str(p).islower()))
        raise RuleError(f"filter.{where}" if where else "filter",
                        f"{first['msg']} (a Qdrant filter)") from exc


def with_target(query_filter: models.Filter | None, target: Target) -> models.Filter | None:
    """The request's filter plus the version's payload match (its points in a shared
    collection)."""
    if not target.payload_match:
        return query_filter
    pinned: list[Any] = [models.FieldCondition(key=key, match=models.MatchValue(value=value))
                         for key, value in target.payload_match.items()]
    if query_filter is None:
        return models.Filter(must=pinned)
    return models.Filter(must=[*pinned, query_filter])


def mismatches(version: Version, info: CollectionInfo) -> list[str]:
    """What differs between a version's envelope and its collection; empty when they agree."""
    problems = []
    if info.dimensions != version.dimensions:
        problems.append(f"dimensions: version {version.name} encodes {version.dimensions}, "
                        f"collection {info.name} holds {info.dimensions}")
    if info.metric != version.metric:
        problems.append(f"distance: version {version.name} wants {version.metric}, "
                        f"collection {info.name} uses {info.metric}")
    if info.model_id is not None and info.model_id != version.model:
        problems.append(f"model: version {version.name} is {version.model}, collection "
                        f"{info.name} was encoded with {info.model_id}")
    return problems


class ServerStore:
    """A Qdrant server (or qdrant-client's local mode in tests)."""

    def __init__(self, client: AsyncQdrantClient) -> None:
        self.client = client

    @classmethod
    def connect(cls, url: str, api_key: str | None = None) -> ServerStore:
        return cls(AsyncQdrantClient(url=url, api_key=api_key, prefer_grpc=True))

    async def search(self, target: Target, vector: VectorLike, limit: int,
                     query_filter: models.Filter | None, with_payload: bool) -> list[Hit]:
        try:
            response = await self.client.query_points(
                target.collection, query=_floats(vector), using=target.vector_name, limit=limit,
                query_filter=with_target(query_filter, target), with_payload=with_payload)
        except Exception as exc:  # qdrant-client raises transport-specific errors
            raise BackendError(f"search in {target.collection} failed: {exc}") from exc
        return [_hit(p, with_payload) for p in response.points]

    async def ensure_collection(self, target: Target, version: Version) -> None:
        if await self.client.collection_exists(target.collection):
            return
        params = models.VectorParams(size=version.dimensions,
                                     distance=models.Distance(_DISTANCES[version.metric]))
        vectors = {target.vector_name: params} if target.vector_name else params
        await self.client.create_collection(target.collection, vectors_config=vectors,
                                            metadata={"model_id": version.model})

    async def upsert(self, target: Target, points: Sequence[PointIn]) -> None:
        structs = [models.PointStruct(id=p.id, payload={**p.payload, **target.payload_match},
                                      vector={target.vector_name: p.vector}
                                      if target.vector_name else p.vector) for p in points]
        await self.client.upsert(target.collection, points=structs)

    async def describe(self, target: Target) -> CollectionInfo | None:
        if not await self.client.collection_exists(target.collection):
            return None
        info = await self.client.get_collection(target.collection)
        vectors = info.config.params.vectors
        params = vectors.get(target.vector_name or "") if isinstance(vectors, dict) else vectors
        if params is None:
            raise BackendError(f"collection {target.collection} has no vector named "
                               f"{target.vector_name!r}")
        metadata = info.config.metadata or {}
        metric = {v: k for k, v in _DISTANCES.items()}[params.distance.value]
        return CollectionInfo(name=target.collection, dimensions=params.size, metric=metric,
                              model_id=metadata.get("model_id"), points=info.points_count or 0)

    async def close(self) -> None:
        await self.client.close()


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
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="qdrant-edge")

    async def _call(self, fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    def _shard(self, collection: str) -> edge.EdgeShard:
        shard = self._shards.get(collection)
        if shard is None:
            path = self.root / collection
            if not (path / "embedshift-collection.json").exists():
                raise BackendError(f"collection {collection} does not exist in {self.root}")
            meta = json.loads((path / "embedshift-collection.json").read_text())
            shard = self._shards[collection] = edge.EdgeShard.load(str(path), self._config(
                meta["dimensions"], meta["metric"], meta["vector_name"]))
        return shard

    def _config(self, dimensions: int, metric: str, vector_name: str | None) -> edge.EdgeConfig:
        params = edge.EdgeVectorParams(size=dimensions,
                                       distance=getattr(edge.Distance, _DISTANCES[metric]))
        return edge.EdgeConfig(vectors={vector_name or "": params},
                               max_search_threads=self.search_threads)

    async def search(self, target: Target, vector: VectorLike, limit: int,
                     query_filter: models.Filter | None, with_payload: bool) -> list[Hit]:
        request = edge.QueryRequest(
            limit=limit, with_payload=with_payload,
            query=edge.Query.Nearest(_floats(vector), using=target.vector_name),
            filter=to_edge_filter(with_target(query_filter, target)))
        try:
            points = await self._call(self._shard(target.collection).query, request)
        except BackendError:
            raise
        except Exception as exc:  # the engine raises plain exceptions
            raise BackendError(f"search in {target.collection} failed: {exc}") from exc
        return [_hit(p, with_payload) for p in points]

    async def ensure_collection(self, target: Target, version: Version) -> None:
        path = self.root / target.collection
        sidecar = path / "embedshift-collection.json"
        if sidecar.exists():
            return
        config = self._config(version.dimensions, version.metric, target.vector_name)
        path.mkdir(parents=True, exist_ok=True)
        self._shards[target.collection] = await self._call(edge.EdgeShard.create, str(path),
                                                           config)
        sidecar.write_text(json.dumps({"dimensions": version.dimensions,
                                       "metric": version.metric, "model_id": version.model,
                                       "vector_name": target.vector_name}))

    async def upsert(self, target: Target, points: Sequence[PointIn]) -> None:
        name = target.vector_name or ""
        batch = [edge.Point(p.id, {name: p.vector}, {**p.payload, **target.payload_match})
                 for p in points]
        shard = self._shard(target.collection)
        await self._call(shard.update, edge.UpdateOperation.upsert_points(batch))

    async def optimize(self, target: Target) -> None:
        """Build the HNSW index now (the engine otherwise waits for its thresholds)."""
        await self._call(self._shard(target.collection).optimize)

    async def describe(self, target: Target) -> CollectionInfo | None:
        sidecar = self.root / target.collection / "embedshift-collection.json"
        if not sidecar.exists():
            return None
        meta = json.loads(sidecar.read_text())
        info = await self._call(self._shard(target.collection).info)
        return CollectionInfo(name=target.collection, dimensions=meta["dimensions"],
                              metric=meta["metric"], model_id=meta["model_id"],
                              points=info.points_count)

    async def close(self) -> None:
        for shard in self._shards.values():
            shard.close()
        self._shards.clear()
        self._pool.shutdown(wait=True)


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
