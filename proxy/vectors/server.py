"""A Qdrant server through qdrant-client's async client (gRPC preferred).

Collections carry the model id they were encoded with in their metadata, so start-up can refuse a
version whose encoder does not match its collection. Every qdrant-client error becomes a
BackendError naming the collection.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import msgspec
from qdrant_client import AsyncQdrantClient, models

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
from rollout_rules.errors import RuleError
from rollout_rules.model import Carried, Target, Version

ANSWER_PAYLOAD = models.PayloadSelectorExclude(exclude=ANSWER_EXCLUDES)
"""A search answer's payload, without our envelope (the source text): the server never sends it;
the document id stays."""
ANSWER_ID_ONLY_PAYLOAD = models.PayloadSelectorInclude(include=ANSWER_ID_ONLY)


class ServerStore:
    """A Qdrant server (and, on qdrant-client's in-memory mode, the fake in ``memory``)."""

    payload_indexes = True  # qdrant-client's local mode has none (and warns)

    def __init__(self, client: AsyncQdrantClient, read_consistency: str | None = None) -> None:
        """``read_consistency``: how many replicas a search asks (``all``, ``majority``,
        ``quorum`` or a number; None: the server's default, one)."""
        self.client = client
        self.consistency = read_consistency_of(read_consistency)

    @classmethod
    def connect(cls, url: str, api_key: str | None = None,
                read_consistency: str | None = None) -> ServerStore:
        return cls(AsyncQdrantClient(url=url, api_key=api_key, prefer_grpc=True),
                   read_consistency)

    async def search(self, target: Target, vector: VectorLike, limit: int,
                     query_filter: models.Filter | None, with_payload: bool) -> list[Hit]:
        with backend_errors(target.collection, "search"):
            response = await self.client.query_points(
                target.collection, query=floats(vector), using=target.vector_name, limit=limit,
                query_filter=with_target(query_filter, target), consistency=self.consistency,
                with_payload=ANSWER_PAYLOAD if with_payload else ANSWER_ID_ONLY_PAYLOAD)
        return [hit(p, with_payload) for p in response.points]

    async def ensure_collection(self, target: Target, version: Version,
                                siblings: Sequence[Version] = (), like: Target | None = None,
                                carried: Mapping[str, Carried] | None = None) -> None:
        with backend_errors(target.collection, "creating the collection"):
            if await self.client.collection_exists(target.collection):
                await self._check_vector(target, version)
                return
            request = await self.creation(target, version, siblings, like, carried)
            await self.client.create_collection(target.collection, **request)
            # versions sharing a collection filter on these keys
            keys = {k for v in (version, *siblings) for k in v.target.payload_match}
            for key in sorted(keys) if self.payload_indexes else ():
                await self.client.create_payload_index(target.collection, key,
                                                       models.PayloadSchemaType.KEYWORD)

    async def creation(self, target: Target, version: Version, siblings: Sequence[Version] = (),
                       like: Target | None = None,
                       carried: Mapping[str, Carried] | None = None) -> dict[str, Any]:
        """The create-collection request for a version: its vectors, and the settings of
        ``like``'s collection when it is another one that exists (``copied_settings``)."""
        source = None
        if like is not None and like.collection != target.collection and \
                await self.client.collection_exists(like.collection):
            source = await self.client.get_collection(like.collection)
        return creation_request(version, siblings, source, like.vector_name if like else None,
                                carried or {})

    async def _check_vector(self, target: Target, version: Version) -> None:
        """A collection that exists: the version's named vector is added in place if it has
        none (Qdrant 1.18's ``PUT /collections/{c}/vectors/{name}``)."""
        info = await self.client.get_collection(target.collection)
        config = _config(info.config.params)
        if vector_to_add(target, version, {
                name: {"dimensions": size, "metric": metric}
                for name, (size, metric) in config.dense.items()}):
            await self.client.create_vector_name(
                target.collection, target.vector_name or "", models.DenseVectorNameConfig(
                    dense=models.DenseVectorConfig(
                        size=version.dimensions,
                        distance=models.Distance(DISTANCES[version.metric]))))

    async def drop_vector(self, target: Target) -> None:
        with backend_errors(target.collection, "removing a vector"):
            if not target.vector_name or not await self.client.collection_exists(
                    target.collection):
                return
            info = await self.client.get_collection(target.collection)
            if target.vector_name in _config(info.config.params).dense:
                await self.client.delete_vector_name(target.collection, target.vector_name)

    async def create(self, target: Target, config: VectorsConfig) -> None:
        dense = {name: models.VectorParams(size=size, distance=models.Distance(DISTANCES[metric]))
                 for name, (size, metric) in config.dense.items()}
        sparse = {name: models.SparseVectorParams(
            modifier=models.Modifier.IDF if modifier == "idf" else None)
            for name, modifier in config.sparse.items()}
        with backend_errors(target.collection, "creating the collection"):
            await self.client.create_collection(
                target.collection, vectors_config=dense[""] if config.single else dense,
                sparse_vectors_config=sparse or None)

    async def query(self, target: Target, stage: Stage, with_payload: bool) -> list[Hit]:
        query, using = _query(stage.query)
        with backend_errors(target.collection, "query"):
            response = await self.client.query_points(
                target.collection, prefetch=[_prefetch(p) for p in stage.prefetch] or None,
                query=query, using=using, limit=stage.limit,
                query_filter=with_target(stage.filter, target),
                score_threshold=stage.score_threshold, consistency=self.consistency,
                with_payload=ANSWER_PAYLOAD if with_payload else ANSWER_ID_ONLY_PAYLOAD)
        return [hit(p, with_payload) for p in response.points]

    async def upsert(self, target: Target, points: Sequence[PointIn]) -> None:
        structs = [models.PointStruct(id=p.id, payload={**p.payload, **target.payload_match},
                                      vector=_vectors(p, target)) for p in points]
        with backend_errors(target.collection, "upsert"):
            await self.client.upsert(target.collection, points=structs)

    async def optimize(self, target: Target) -> None:
        """Nothing to do: a server indexes as its optimizer thresholds say."""

    async def describe(self, target: Target) -> CollectionInfo | None:
        with backend_errors(target.collection, "describing the collection"):
            if not await self.client.collection_exists(target.collection):
                return None
            info = await self.client.get_collection(target.collection)
        config = _config(info.config.params)
        spec = config.dense.get(target.vector_name or "")
        if spec is None:
            return CollectionInfo(name=target.collection, dimensions=0, metric="",
                                  model_id=None, points=info.points_count or 0,
                                  missing=no_vector(target, config.dense), config=config)
        metadata = info.config.metadata or {}
        # a shared collection holds several models' points: each point's envelope names its own
        model_id = None if target.payload_match else metadata.get("model_id")
        return CollectionInfo(name=target.collection, dimensions=spec[0], metric=spec[1],
                              model_id=model_id, points=info.points_count or 0, config=config)

    async def scroll(self, target: Target, offset: PointId | None, limit: int,
                     fields: Sequence[str] | None = None, vectors: bool = False, *,
                     query_filter: models.Filter | None = None
                     ) -> tuple[list[Stored], PointId | None]:
        with backend_errors(target.collection, "scroll"):
            records, following = await self.client.scroll(
                target.collection, scroll_filter=with_target(query_filter, target), limit=limit,
                offset=offset, with_payload=True if fields is None else list(fields),
                with_vectors=vectors)
        return ([stored(r, target.vector_name) for r in records],
                None if following is None else following if isinstance(following, int)
                else str(following))

    async def retrieve(self, target: Target, ids: Sequence[PointId],
                       fields: Sequence[str] | None = None, vectors: bool = False
                       ) -> list[Stored]:
        if not ids:
            return []
        with backend_errors(target.collection, "retrieve"):
            records = await self.client.retrieve(
                target.collection, list(ids), with_vectors=vectors,
                with_payload=True if fields is None else list(fields))
        return [stored(r, target.vector_name) for r in records]

    async def drop(self, target: Target) -> None:
        with backend_errors(target.collection, "dropping the collection"):
            if await self.client.collection_exists(target.collection):
                await self.client.delete_collection(target.collection)

    async def count(self, target: Target, query_filter: models.Filter | None = None) -> int:
        with backend_errors(target.collection, "count"):
            result = await self.client.count(
                target.collection, count_filter=with_target(query_filter, target), exact=True)
        return result.count

    async def delete_where(self, target: Target, query_filter: models.Filter) -> None:
        where = with_target(query_filter, target)
        assert where is not None, "a filter was given"
        with backend_errors(target.collection, "delete"):
            await self.client.delete(target.collection,
                                     points_selector=models.FilterSelector(filter=where))

    async def delete(self, target: Target, ids: Sequence[PointId]) -> None:
        with backend_errors(target.collection, "delete"):
            await self.client.delete(target.collection,
                                     points_selector=models.PointIdsList(points=list(ids)))

    async def set_payload(self, target: Target, payload: dict[str, Any], *,
                          ids: Sequence[PointId] | None = None,
                          query_filter: models.Filter | None = None) -> None:
        with backend_errors(target.collection, "set payload"):
            await self.client.set_payload(target.collection, payload,
                                          points=_selector(target, ids, query_filter))

    async def delete_payload(self, target: Target, keys: Sequence[str], *,
                             ids: Sequence[PointId] | None = None,
                             query_filter: models.Filter | None = None) -> None:
        with backend_errors(target.collection, "delete payload"):
            await self.client.delete_payload(target.collection, list(keys),
                                             points=_selector(target, ids, query_filter))

    async def index_field(self, target: Target, field: str, schema: str) -> None:
        if not self.payload_indexes:
            return  # qdrant-client's local mode has none (and warns)
        with backend_errors(target.collection, "index a payload field"):
            await self.client.create_payload_index(target.collection, field,
                                                   models.PayloadSchemaType(schema))

    async def drop_index(self, target: Target, field: str) -> None:
        if not self.payload_indexes or field not in await self.indexed_fields(target):
            return
        with backend_errors(target.collection, "drop a payload index"):
            await self.client.delete_payload_index(target.collection, field)

    async def indexed_fields(self, target: Target) -> dict[str, str]:
        with backend_errors(target.collection, "reading its payload indexes"):
            info = await self.client.get_collection(target.collection)
        return {field: str(getattr(index.data_type, "value", index.data_type))
                for field, index in (info.payload_schema or {}).items()}

    async def collections(self) -> list[str]:
        with backend_errors("*", "listing collections"):
            found = await self.client.get_collections()
        return sorted(c.name for c in found.collections)

    async def close(self) -> None:
        await self.client.close()


def read_consistency_of(value: str | None) -> models.ReadConsistency | None:
    """``EMBEDSHIFT_QDRANT_READ_CONSISTENCY`` as Qdrant takes it: a number of replicas or
    all, majority, quorum; RuleError naming the setting otherwise."""
    if value is None or value == "":
        return None
    if value.isdigit() and int(value) > 0:
        return int(value)
    try:
        return models.ReadConsistencyType(value)
    except ValueError:
        raise RuleError("EMBEDSHIFT_QDRANT_READ_CONSISTENCY", f"{value!r}: a number of "
                        "replicas, or all, majority, quorum") from None


def creation_request(version: Version, siblings: Sequence[Version],
                     like: models.CollectionInfo | None, like_vector: str | None,
                     carried: Mapping[str, Carried] | None = None) -> dict[str, Any]:
    """The create-collection request (pure): the version's vectors (and its siblings' in a
    shared collection) with ``like``'s storage and index settings: shard number, replication
    factor, write consistency factor, on-disk payload, and per vector on-disk storage, HNSW and
    quantization (the like vector's for each), the collection's HNSW and quantization, and over
    them what the version's ``target.create`` says. A migration must not turn a replicated,
    quantized collection into a single default copy unless the rule says so."""
    copied, per_vector = copied_settings(like, like_vector) if like else ({}, {})
    said = version.target.create  # the rule's own word wins over stable's
    if said is not None:
        copied.update({key: value for key, value in msgspec.structs.asdict(said).items()
                       if value is not None and key != "on_disk"})
        if said.on_disk is not None:
            per_vector["on_disk"] = said.on_disk
    params = {name: models.VectorParams(size=spec["dimensions"], distance=models.Distance(
        DISTANCES[spec["metric"]]), **per_vector)
        for name, spec in collection_vectors(version, siblings).items()}
    carried = carried or {}
    params.update({name: models.VectorParams(size=c.size or 0, distance=models.Distance(
        DISTANCES[c.metric])) for name, c in carried.items() if not c.sparse})
    sparse = {name: models.SparseVectorParams(
        modifier=models.Modifier.IDF if c.modifier == "idf" else None)
        for name, c in carried.items() if c.sparse}
    return {"vectors_config": params[""] if list(params) == [""] else params,
            **({"sparse_vectors_config": sparse} if sparse else {}),
            "metadata": {"model_id": version.model}, **copied}


def copied_settings(info: models.CollectionInfo, vector: str | None
                    ) -> tuple[dict[str, Any], dict[str, Any]]:
    """What a new collection takes of ``info``'s: collection settings, and the settings of its
    vector ``vector`` (the unnamed one when None) for each of the new one's vectors."""
    params, config = info.config.params, info.config
    copied: dict[str, Any] = {
        "shard_number": params.shard_number, "replication_factor": params.replication_factor,
        "write_consistency_factor": params.write_consistency_factor,
        "on_disk_payload": params.on_disk_payload,
        "hnsw_config": models.HnswConfigDiff(**config.hnsw_config.model_dump(
            exclude_none=True)) if config.hnsw_config else None,
        "quantization_config": config.quantization_config}
    vectors = params.vectors
    source = vectors.get(vector or "") if isinstance(vectors, dict) else vectors
    per_vector = {} if source is None else {
        "on_disk": source.on_disk, "hnsw_config": source.hnsw_config,
        "quantization_config": source.quantization_config}
    return ({k: v for k, v in copied.items() if v is not None},
            {k: v for k, v in per_vector.items() if v is not None})


def _metric(distance: models.Distance) -> str:
    return {v: k for k, v in DISTANCES.items()}[distance.value]


def _selector(target: Target, ids: Sequence[PointId] | None,
              query_filter: models.Filter | None) -> Any:
    if ids is not None:
        return models.PointIdsList(points=list(ids))
    where = with_target(query_filter, target)
    if where is None:
        raise RuleError("filter", "name the points by id or by a filter")
    return models.FilterSelector(filter=where)


def _config(params: Any) -> VectorsConfig:
    """A collection's vectors as it was created."""
    vectors = params.vectors
    single = vectors is not None and not isinstance(vectors, dict)
    held = {"": vectors} if single else vectors or {}
    return VectorsConfig(
        dense={name: (p.size, _metric(p.distance)) for name, p in held.items()},
        sparse={name: "idf" if p is not None and p.modifier == models.Modifier.IDF else None
                for name, p in (params.sparse_vectors or {}).items()},
        single=single)


def _vectors(point: PointIn, target: Target) -> Any:
    """A point's vectors as qdrant-client takes them: its own (unnamed, or by the target's
    name) and the others by name."""
    if not point.named:
        return {target.vector_name: point.vector} if target.vector_name else point.vector
    vectors: dict[str, Any] = {name: _vector(v) for name, v in point.named.items()}
    if point.vector:
        vectors[target.vector_name or ""] = point.vector
    return vectors


def _vector(vector: Named) -> Any:
    if isinstance(vector, Sparse):
        return models.SparseVector(indices=vector.indices, values=vector.values)
    return vector


def _query(query: Nearest | Fusion) -> tuple[Any, str | None]:
    if isinstance(query, Nearest):
        return models.NearestQuery(nearest=_vector(searched(query.vector))), query.using
    if query.method == "dbsf":
        return models.FusionQuery(fusion=models.Fusion.DBSF), None
    if query.k is None and query.weights is None:
        return models.FusionQuery(fusion=models.Fusion.RRF), None
    return models.RrfQuery(rrf=models.Rrf(k=query.k, weights=query.weights)), None


def _prefetch(stage: Stage) -> models.Prefetch:
    query, using = _query(stage.query)
    return models.Prefetch(prefetch=[_prefetch(p) for p in stage.prefetch] or None,
                           query=query, using=using, filter=stage.filter, limit=stage.limit,
                           score_threshold=stage.score_threshold)
