"""The fake and Redis remember handed-out vectors alike: by alias, for their time, within a cap.

A flood of anonymous embeddings cannot grow the store that holds the rules: 500,000 fingerprints
leave Redis within the cap's budget and every rule as it was."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest

from proxy.config import Settings
from proxy.state.client import connect
from proxy.state.handed import ENTRY_BYTES, HandedOut, MemoryHandedOut, RedisHandedOut
from proxy.state.redis_server import EmbeddedRedis
from proxy.state.rulestore import RedisRuleStore
from tests.unit.core.rollouts import rollout


@pytest.fixture(params=["memory", "redis"])
async def handed(request: pytest.FixtureRequest, prefix: str) -> AsyncIterator[HandedOut]:
    if request.param == "memory":
        yield MemoryHandedOut(cap=5)
        return
    server: EmbeddedRedis = request.getfixturevalue("redis_server")
    store = RedisRuleStore(connect(Settings(), server.url), prefix)
    yield RedisHandedOut(store.client, prefix, cap=5)
    await store.aclose()


async def test_a_fingerprint_is_recalled_by_its_alias_for_its_time(handed: HandedOut) -> None:
    assert await handed.remember("products", "v2", ["a", "b"], ttl_s=60) == 0
    assert await handed.recall("products", "a") == "v2"
    assert await handed.recall("products", "c") is None
    assert await handed.recall("docs", "a") is None  # another alias never handed it out
    await handed.remember("products", "v1", ["a"], ttl_s=60)  # handed out again, by v1
    assert await handed.recall("products", "a") == "v1"
    await handed.remember("products", "v1", ["brief"], ttl_s=0.05)
    await asyncio.sleep(0.1)
    assert await handed.recall("products", "brief") is None


async def test_past_the_cap_the_oldest_are_dropped_and_counted(handed: HandedOut) -> None:
    assert await handed.remember("products", "v1", ["f0", "f1", "f2"], ttl_s=60) == 0
    assert await handed.remember("products", "v2", ["f3", "f4", "f5", "f6"], ttl_s=60) == 2
    assert [await handed.recall("products", f"f{n}") for n in range(7)] == \
        [None, None, "v1", "v2", "v2", "v2", "v2"]
    assert await handed.remember("docs", "v1", ["f0"], ttl_s=60) == 0  # a cap per alias


async def test_half_a_million_anonymous_vectors_stay_in_budget_and_leave_rules_alone(
        redis_server: EmbeddedRedis, prefix: str) -> None:
    """Redis's own account of the keys (``MEMORY USAGE``, every element counted): the server is
    shared with other tests, so its total would measure them too."""
    store = RedisRuleStore(connect(Settings(), redis_server.url), prefix)
    keys = [f"{prefix}:{{products}}:handed{tail}" for tail in ("", ":until")]
    try:
        declared = await store.create(rollout(percent=10), "alice", "declare")
        handed = RedisHandedOut(store.client, prefix, cap=100_000)
        dropped = 0
        for _ in range(500):
            dropped += await handed.remember(
                "products", "v2", [uuid.uuid4().hex for _ in range(1000)], ttl_s=3600)
        used = sum([await store.client.memory_usage(key, samples=0) or 0 for key in keys])
        kept = await store.client.zcard(keys[1])
        print(f"500,000 remembered: {kept} kept, {dropped} dropped, {used / 1e6:.1f} MB held")
        assert (kept, dropped) == (100_000, 400_000)
        assert used < 100_000 * ENTRY_BYTES  # the cap's budget
        assert await store.get("products") == declared  # the rule as it was
    finally:
        await store.client.delete(*keys)
        await store.aclose()
