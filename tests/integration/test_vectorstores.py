"""Both vector store adapters do the same things the same way: the Qdrant server adapter against
qdrant-client's local mode, the embedded one against Qdrant's engine (qdrant-edge)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest
from qdrant_client import AsyncQdrantClient

from proxy.vectorstore import EdgeStore, PointIn, ServerStore, VectorStore, mismatches, parse_filter
from rollout_rules.errors import RuleError
from rollout_rules.model import Target, Version

pytestmark = pytest.mark.integration


def _version(name: str, target: Target, metric: str = "cosine") -> Version:
    return Version(name=name, model=f"org/{name}", dimensions=8, target=target,
                   metric=metric)  # type: ignore[arg-type]


@pytest.fixture(params=["server", "edge"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[VectorStore]:
    adapter: VectorStore = (ServerStore(AsyncQdrantClient(location=":memory:"))
                            if request.param == "server" else EdgeStore(tmp_path / "qdrant"))
    yield adapter
    await adapter.close()


async def test_versions_sharing_a_collection_see_only_their_points(store: VectorStore) -> None:
    """Two versions in one collection, told apart by payload and using a named vector each:
    the layouts the rule model allows must search as declared."""
    rng = np.random.default_rng(7)
    vectors = rng.standard_normal((20, 8)).astype(np.float32)
    v1 = _version("v1", Target(collection="shared", vector_name="dense",
                               payload_match={"model_version": "v1"}))
    v2 = _version("v2", Target(collection="shared", vector_name="dense",
                               payload_match={"model_version": "v2"}))
    await store.ensure_collection(v1.target, v1)
    await store.upsert(v1.target, [PointIn(i, vectors[i].tolist(), {"n": i}) for i in range(10)])
    await store.upsert(v2.target, [PointIn(i, vectors[i].tolist(), {"n": i})
                                   for i in range(10, 20)])
    hits = await store.search(v1.target, vectors[3], 5, None, with_payload=True)
    assert hits[0].id == 3 and hits[0].score == pytest.approx(1.0, abs=1e-5)
    assert all(h.payload is not None and h.payload["model_version"] == "v1" for h in hits)
    hits = await store.search(v2.target, vectors[3], 20, None, with_payload=False)
    assert {h.id for h in hits} <= set(range(10, 20)) and hits[0].payload is None
    in_range = parse_filter({"must": [{"key": "n", "range": {"gte": 12, "lt": 15}}]})
    hits = await store.search(v2.target, vectors[13], 10, in_range, with_payload=True)
    assert sorted(h.id for h in hits) == [12, 13, 14]


async def test_describe_reports_what_a_version_is_checked_against(store: VectorStore) -> None:
    version = _version("v1", Target(collection="plain"))
    assert await store.describe(version.target) is None
    await store.ensure_collection(version.target, version)
    await store.upsert(version.target, [PointIn(1, [0.1] * 8)])
    info = await store.describe(version.target)
    assert info is not None
    assert (info.dimensions, info.metric, info.model_id, info.points) == (8, "cosine", "org/v1", 1)
    assert mismatches(version, info) == []
    wrong = _version("v1", Target(collection="plain"), metric="dot")
    assert mismatches(wrong, info) == ["distance: version v1 wants dot, collection plain uses "
                                       "cosine"]


def test_a_filter_that_is_not_a_qdrant_filter_is_refused() -> None:
    with pytest.raises(RuleError) as caught:
        parse_filter({"must": [{"key": "a", "match": {"value": {"nested": 1}}}]})
    assert caught.value.field.startswith("filter.must.0")
    assert parse_filter(None) is None
