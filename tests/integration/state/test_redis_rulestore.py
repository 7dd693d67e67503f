"""The Redis rule store survives racing clients, hand-written documents, outages and passwords."""

from __future__ import annotations

import asyncio
import itertools
from functools import partial
from pathlib import Path

import pytest

from proxy.config import Settings
from proxy.state.client import connect
from proxy.state.redis_server import EmbeddedRedis
from proxy.state.rulestore import RedisRuleStore
from proxy.state.watcher import RuleWatcher
from rollout_rules import ops
from rollout_rules.errors import ConflictError, RuleError, StoreUnavailable
from rollout_rules.model import Rollout
from tests.conftest import make_server
from tests.eventually import eventually
from tests.unit.core.rollouts import rollout

pytestmark = pytest.mark.integration


def _second_store(server: EmbeddedRedis, prefix: str) -> RedisRuleStore:
    return RedisRuleStore(connect(Settings(), server.url), prefix)


async def test_fifty_racing_writers_lose_nothing(redis_server: EmbeddedRedis, prefix: str,
                                                 store: RedisRuleStore) -> None:
    await store.create(rollout(percent=0), "setup", "declare")
    writers = [_second_store(redis_server, prefix) for _ in range(50)]

    async def write(i: int, writer: RedisRuleStore) -> int | None:
        try:
            change = await writer.apply("products", partial(ops.set_percent, percent=i + 1),
                                        f"op-{i}", f"writer {i}")
        except ConflictError:
            return None
        return change.after.revision

    results = await asyncio.gather(*(write(i, w) for i, w in enumerate(writers)))
    winners = sorted(r for r in results if r is not None)
    assert 1 <= len(winners) < 50, "the writers did not race"
    history = await store.history("products", limit=100)
    assert [e.revision for e in reversed(history)] == list(range(1, len(winners) + 2))
    assert winners == list(range(2, len(winners) + 2))
    # Each audit entry's before is exactly the previous entry's after: no update was lost.
    chronological = list(reversed(history))
    for earlier, later in itertools.pairwise(chronological):
        assert later.before == earlier.after

    # With retries every writer lands, and every change is accounted for once. The targets
    # (60.00-60.49) differ from every first-round percent (1-50), so none is a no-op.
    retried = await asyncio.gather(*(
        w.apply_with_retry("products", partial(ops.set_percent, percent=60 + i / 100),
                           f"op-{i}", "retry", attempts=200) for i, w in enumerate(writers)))
    assert all(c.changed for c in retried)
    history = await store.history("products", limit=200)
    assert len(history) == len(winners) + 1 + 50
    assert sorted(e.after.percent for e in history if e.reason == "retry") == \
        sorted(60 + i / 100 for i in range(50))
    for writer in writers:
        await writer.aclose()


async def test_a_change_reaches_a_second_client_by_notification(redis_server: EmbeddedRedis,
                                                                prefix: str,
                                                                store: RedisRuleStore) -> None:
    await store.create(rollout(percent=1), "alice", "declare")
    other = _second_store(redis_server, prefix)
    watcher = RuleWatcher(other, refresh_interval_s=3600)  # only a notification can deliver it
    await watcher.start()
    try:
        assert watcher.rollouts["products"].percent == 1
        await store.apply("products", partial(ops.set_percent, percent=7), "alice", "ramp")
        await eventually(lambda: watcher.rollouts["products"].percent == 7, timeout_s=2)
        assert watcher.connected
    finally:
        await watcher.stop()
        await other.aclose()


async def test_a_bad_stored_document_is_refused_and_the_last_good_stays(
        store: RedisRuleStore, redis_server: EmbeddedRedis, prefix: str) -> None:
    good = await store.create(rollout(percent=3), "alice", "declare")
    watcher = RuleWatcher(_second_store(redis_server, prefix), refresh_interval_s=3600)
    await watcher.start()
    try:
        # Someone bypasses embedshift and writes a broken document straight into Redis.
        broken = b'{"alias": "products", "versions": [], "stable": "v1", "revision": 2}'
        await store.client.hset(f"{prefix}:{{products}}:rules", mapping={"revision": 2,
                                                                          "doc": broken})
        await store.client.publish(store.channel, "products 2")
        await eventually(lambda: "products" in watcher.rejected)
        assert watcher.rollouts["products"] == good
        assert "versions" in watcher.rejected["products"]
        with pytest.raises(RuleError, match="stored rule for 'products' is invalid"):
            await store.get("products")
    finally:
        await watcher.stop()
        await watcher.store.aclose()


async def test_redis_down_keeps_the_snapshot_and_recovery_is_automatic(tmp_path: Path) -> None:
    server = make_server(tmp_path)
    server.start()
    watcher_store = RedisRuleStore(connect(Settings(), server.url), "fs")
    writer = RedisRuleStore(connect(Settings(), server.url), "fs")
    await writer.create(rollout(percent=2), "alice", "declare")
    watcher = RuleWatcher(watcher_store, refresh_interval_s=0.2)
    await watcher.start()
    try:
        server.kill()
        await eventually(lambda: not watcher.connected)
        assert watcher.rollouts["products"].percent == 2  # fail static: still serving
        assert watcher.last_error is not None and "unreachable" in watcher.last_error
        with pytest.raises(StoreUnavailable):
            await writer.get("products")
        server.start()  # same socket, same AOF: the rule survived the crash
        await writer.apply("products", partial(ops.set_percent, percent=9), "alice", "after")
        await eventually(lambda: watcher.rollouts["products"].percent == 9)
        # A pooled connection that died with the server may fail one more read before the
        # next full read succeeds: connected comes back with that read, not with the rule.
        await eventually(lambda: watcher.connected and watcher.last_error is None)
    finally:
        await watcher.stop()
        await watcher_store.aclose()
        await writer.aclose()
        server.stop()


async def test_a_password_protected_redis(tmp_path: Path) -> None:
    server = make_server(tmp_path, password="s3cret-pw")
    server.start()
    try:
        authed = RedisRuleStore(connect(Settings(), server.url), "auth")
        await authed.create(rollout(), "alice", "declare")
        await authed.aclose()
        anonymous = RedisRuleStore(connect(Settings(), f"unix://{server.socket_path}"), "auth")
        with pytest.raises(StoreUnavailable) as caught:
            await anonymous.get("products")
        assert "s3cret-pw" not in str(caught.value)
        await anonymous.aclose()
    finally:
        server.stop()


async def test_watcher_sees_a_new_alias_a_lost_one_and_a_deleted_one(store: RedisRuleStore,
                                                          redis_server: EmbeddedRedis,
                                                          prefix: str) -> None:
    seen: list[tuple[str, Rollout | None]] = []
    watcher = RuleWatcher(_second_store(redis_server, prefix), refresh_interval_s=0.1,
                          on_change=lambda alias, _before, after: seen.append((alias, after)))
    await watcher.start()
    try:
        await store.create(rollout(alias="docs"), "alice", "declare")
        await eventually(lambda: "docs" in watcher.rollouts)
        declared = watcher.rollouts["docs"]
        await store.client.delete(f"{prefix}:{{docs}}:rules")  # removed by hand: lost, not meant
        await store.client.srem(f"{prefix}:aliases", "docs")
        await eventually(lambda: "docs" in watcher.vanished)
        assert watcher.rollouts["docs"] == declared
        restored = await store.restore(declared, "bob", "put back")
        await eventually(lambda: "docs" not in watcher.vanished)
        await store.delete("docs", restored.revision, "bob", "retired")
        await eventually(lambda: "docs" not in watcher.rollouts)
        assert [alias for alias, _ in seen] == ["docs", "docs", "docs"] and seen[2][1] is None
    finally:
        await watcher.stop()
        await watcher.store.aclose()
