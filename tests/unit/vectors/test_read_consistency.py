"""A search on a Qdrant server may ask more than one replica.

EMBEDSHIFT_QDRANT_READ_CONSISTENCY: a number, all, majority or quorum."""

from __future__ import annotations

import pytest
from qdrant_client import AsyncQdrantClient, models

from proxy.config import load_settings
from proxy.vectors.base import PointIn
from proxy.vectors.server import ServerStore, read_consistency_of
from rollout_rules.errors import EmbedshiftError, RuleError
from rollout_rules.model import Target, Version


def test_a_read_consistency_is_a_number_of_replicas_or_a_named_quorum() -> None:
    assert read_consistency_of(None) is None
    assert read_consistency_of("2") == 2
    assert read_consistency_of("majority") == models.ReadConsistencyType.MAJORITY
    with pytest.raises(RuleError, match="EMBEDSHIFT_QDRANT_READ_CONSISTENCY"):
        read_consistency_of("most")
    with pytest.raises(EmbedshiftError, match="qdrant_read_consistency"):
        load_settings({"EMBEDSHIFT_QDRANT_READ_CONSISTENCY": "most"}, {})
    assert load_settings({"EMBEDSHIFT_QDRANT_READ_CONSISTENCY": "quorum"},
                         {}).qdrant_read_consistency == "quorum"


async def test_a_search_passes_it_and_is_answered() -> None:
    store = ServerStore(AsyncQdrantClient(location=":memory:"), "majority")
    version = Version(name="v1", model="m", dimensions=2, target=Target(collection="c"))
    await store.ensure_collection(version.target, version)
    await store.upsert(version.target, [PointIn(1, [1.0, 0.0], {}), PointIn(2, [0.0, 1.0], {})])
    hits = await store.search(version.target, [1.0, 0.1], 1, None, False)
    assert [hit.id for hit in hits] == [1] and store.consistency == "majority"
