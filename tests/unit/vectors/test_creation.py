"""A candidate's collection is created with stable's settings.

A migration must not turn a replicated, quantized collection into one default copy.

What qdrant-client's local mode keeps of a collection's settings (per-vector on-disk storage and
HNSW) is checked there end to end, through ingestion; what it does not keep (shards, replicas,
write consistency, on-disk payload, the collection's HNSW and quantization) is checked on the
create request built from the collection info a Qdrant server answers, validated by Qdrant's API
schema as qdrant-client carries it (``models.CreateCollection``)."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest
from qdrant_client import models

from loadtest.corpus import corpus
from proxy.ingest.plan import plan
from proxy.ingest.writer import Ingestor
from proxy.models.fake import HashModel
from proxy.models.loader import ModelCache
from proxy.state.memory import MemoryRuleStore
from proxy.vectors.memory import MemoryStore
from proxy.vectors.server import creation_request
from rollout_rules.errors import RuleError
from rollout_rules.model import Rollout, Target, Version, parse_rollout

V1 = Version(name="v1", model="fake-a", dimensions=384, target=Target(collection="kb_v1"))
V2 = Version(name="v2", model="fake-b", dimensions=384, target=Target(collection="kb_v2"))

# GET /collections/kb_v1 of a Qdrant server (1.x), as its API documents the answer
SERVER_INFO = {
    "status": "green", "optimizer_status": "ok", "points_count": 1000,
    "segments_count": 6, "payload_schema": {},
    "config": {
        "params": {"vectors": {"size": 384, "distance": "Cosine", "on_disk": True,
                               "hnsw_config": {"m": 32, "on_disk": True}},
                   "shard_number": 6, "replication_factor": 3,
                   "write_consistency_factor": 2, "on_disk_payload": True},
        "hnsw_config": {"m": 24, "ef_construct": 200, "full_scan_threshold": 10000,
                        "max_indexing_threads": 0, "on_disk": False},
        "optimizer_config": {"deleted_threshold": 0.2, "vacuum_min_vector_number": 1000,
                             "default_segment_number": 0, "indexing_threshold": 20000,
                             "flush_interval_sec": 5},
        "wal_config": {"wal_capacity_mb": 32, "wal_segments_ahead": 0},
        "quantization_config": {"scalar": {"type": "int8", "quantile": 0.99,
                                           "always_ram": True}}}}


def test_the_create_request_takes_stables_shards_replicas_storage_and_quantization() -> None:
    info = models.CollectionInfo.model_validate(SERVER_INFO)
    request = creation_request(V2, [V1], info, None)
    checked = models.CreateCollection.model_validate(  # Qdrant's schema for the request body
        {"vectors" if key == "vectors_config" else key: value for key, value in request.items()})
    assert (checked.shard_number, checked.replication_factor,
            checked.write_consistency_factor, checked.on_disk_payload) == (6, 3, 2, True)
    assert checked.hnsw_config is not None and checked.hnsw_config.m == 24
    assert checked.hnsw_config.ef_construct == 200
    assert isinstance(checked.quantization_config, models.ScalarQuantization)
    assert checked.quantization_config.scalar.always_ram is True
    vectors = checked.vectors
    assert isinstance(vectors, models.VectorParams) and vectors.size == 384
    assert vectors.on_disk is True and vectors.hnsw_config is not None
    assert vectors.hnsw_config.m == 32
    assert request["metadata"] == {"model_id": "fake-b"}


def test_without_a_collection_to_copy_the_engine_decides() -> None:
    request = creation_request(V2, [V1], None, None)
    assert set(request) == {"vectors_config", "metadata"}


async def test_ingestion_creates_the_candidate_like_stable_and_plan_says_so(tmp_path: Path
                                                                            ) -> None:
    store, rules = MemoryStore(), MemoryRuleStore()
    await store.client.create_collection(V1.target.collection, vectors_config=models.VectorParams(
        size=384, distance=models.Distance.COSINE, on_disk=True,
        hnsw_config=models.HnswConfigDiff(m=32)))
    models_ = {"fake-a": HashModel("fake-a"), "fake-b": HashModel("fake-b")}
    ingestor = Ingestor(store, rules, ModelCache(tmp_path, load=lambda v: models_[v.model]))
    stable_only = await rules.create(Rollout(alias="kb", versions=(V1,), stable="v1"), "t", "d")
    await ingestor.write(stable_only, corpus(50))
    rollout = await rules.write(msgspec.structs.replace(stable_only, versions=(V1, V2),
                                                        candidate="v2"),
                                stable_only.revision, "t", "add v2")
    planned = await plan(ingestor, rollout, sample=20)
    assert planned.creates is not None
    assert planned.creates["vectors_config"]["on_disk"] is True
    assert planned.creates["vectors_config"]["hnsw_config"]["m"] == 32
    await ingestor.write(rollout, corpus(10))  # v2's collection is made here
    made = (await store.client.get_collection(V2.target.collection)).config.params.vectors
    assert isinstance(made, models.VectorParams)
    assert made.on_disk is True and made.hnsw_config is not None and made.hnsw_config.m == 32
    assert (await plan(ingestor, rollout, sample=20)).creates is None  # it is there now


def test_what_the_rule_says_wins_over_stables_settings() -> None:
    info = models.CollectionInfo.model_validate(SERVER_INFO)
    rule = parse_rollout({
        "alias": "kb", "stable": "v1", "candidate": "v2",
        "versions": [{"name": "v1", "model": "fake-a", "dimensions": 384,
                      "target": {"collection": "kb_v1"}},
                     {"name": "v2", "model": "fake-b", "dimensions": 384,
                      "target": {"collection": "kb_v2", "create": {
                          "shard_number": 2, "replication_factor": 2, "on_disk": False}}}]})
    request = creation_request(rule.version("v2"), [rule.version("v1")], info, None)
    assert (request["shard_number"], request["replication_factor"]) == (2, 2)
    assert request["write_consistency_factor"] == 2  # not said: stable's
    assert request["vectors_config"].on_disk is False
    with pytest.raises(RuleError, match=r"versions\[1\]\.target\.create"):
        parse_rollout({"alias": "kb", "stable": "v1", "versions": [
            {"name": "v1", "model": "fake-a", "dimensions": 384,
             "target": {"collection": "kb_v1"}},
            {"name": "v2", "model": "fake-b", "dimensions": 384,
             "target": {"collection": "kb_v2", "create": {"shards": 2}}}]})
