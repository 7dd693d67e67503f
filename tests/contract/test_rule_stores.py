"""The in-memory fake and the Redis store declare, compare-and-set, audit and notify alike."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from functools import partial

import pytest

from proxy.config import Settings
from proxy.state.base import RuleStore
from proxy.state.client import connect
from proxy.state.memory import MemoryRuleStore
from proxy.state.redis_server import EmbeddedRedis
from proxy.state.rulestore import RedisRuleStore
from proxy.state.watcher import RuleWatcher
from rollout_rules import ops
from rollout_rules.errors import ConflictError, NotFoundError, TransitionError
from tests.eventually import eventually
from tests.unit.core.rollouts import rollout


@pytest.fixture(params=["memory", "redis"])
async def stores(request: pytest.FixtureRequest, prefix: str
                 ) -> AsyncIterator[tuple[RuleStore, RuleStore]]:
    """A writer and a reader on the same store: two connections to Redis, or the one fake."""
    if request.param == "memory":
        memory = MemoryRuleStore()
        yield memory, memory
        return
    server: EmbeddedRedis = request.getfixturevalue("redis_server")
    writer, reader = (RedisRuleStore(connect(Settings(), server.url), prefix) for _ in range(2))
    yield writer, reader
    await writer.aclose()
    await reader.aclose()


@pytest.fixture
def store(stores: tuple[RuleStore, RuleStore]) -> RuleStore:
    return stores[0]


async def test_a_declared_rule_reads_back_with_revision_and_author(store: RuleStore) -> None:
    stored = await store.create(rollout(percent=5), "alice", "first")
    assert (stored.revision, stored.updated_by, stored.reason) == (1, "alice", "first")
    assert await store.get("products") == stored
    assert await store.aliases() == ["products"]
    with pytest.raises(ConflictError):
        await store.create(rollout(), "bob", "again")
    with pytest.raises(NotFoundError):
        await store.get("nothing-here")


async def test_history_records_who_what_and_why(store: RuleStore) -> None:
    await store.create(rollout(percent=0), "alice", "declare")
    await store.apply("products", partial(ops.set_percent, percent=10), "bob", "ramp")
    await store.apply("products", ops.rollback, "alertmanager", "p99 too high")
    unchanged = await store.apply("products", ops.rollback, "alertmanager", "again")
    assert not unchanged.changed
    history = await store.history("products")
    assert [(e.actor, e.reason) for e in history] == [
        ("alertmanager", "p99 too high"), ("bob", "ramp"), ("alice", "declare")]
    assert history[0].before is not None and history[0].before.percent == 10
    assert history[0].after.state == "rolled_back"
    assert history[2].before is None


async def test_an_expected_revision_that_moved_is_a_conflict(store: RuleStore) -> None:
    await store.create(rollout(), "alice", "declare")
    await store.apply("products", partial(ops.set_percent, percent=5), "bob", "ramp")
    with pytest.raises(ConflictError) as caught:
        await store.apply("products", ops.pause, "carol", "hold", expected_revision=1)
    assert (caught.value.expected, caught.value.actual) == (1, 2)


async def test_coverage_and_popularity(store: RuleStore) -> None:
    await store.set_coverage("products", "v2", 150, 200)
    assert await store.coverage("products") == {"v2": 0.75}
    assert await store.coverage("products", "popularity") == {"v2": 0.75}  # not measured yet
    await store.set_coverage("products", "v2", 150, 200, popular=0.9)
    assert await store.coverage("products", "popularity") == {"v2": 0.9}
    assert await store.coverage("products") == {"v2": 0.75}
    await store.record_hits("products", {"d1": 1, "d2": 1})
    await store.record_hits("products", {"d3": 5, "d1": 1})
    assert await store.most_popular("products", 2) == [("d3", 5.0), ("d1", 2.0)]
    assert await store.report("products", "v2", "verify") is None
    await store.put_report("products", "v2", "verify", {"passed": True, "missing": 0})
    assert await store.report("products", "v2", "verify") == {"passed": True, "missing": 0}


async def test_each_kind_of_report_is_kept_apart(store: RuleStore) -> None:
    """A candidate's verify, quality and plan reports are three records, and a version's are
    its own; a write no replica had to confirm leaves nothing unconfirmed."""
    for kind in ("verify", "quality", "plan"):
        await store.put_report("products", "v2", kind, {"kind": kind})
    assert [await store.report("products", "v2", kind) for kind in ("verify", "quality", "plan")
            ] == [{"kind": "verify"}, {"kind": "quality"}, {"kind": "plan"}]
    assert await store.report("products", "v3", "quality") is None
    assert await store.report("other", "v2", "verify") is None
    await store.create(rollout(percent=1), "alice", "declare")
    assert store.unconfirmed == []


async def test_a_change_reaches_a_watcher_by_notification_alone(
        stores: tuple[RuleStore, RuleStore]) -> None:
    writer, reader = stores
    await writer.create(rollout(percent=1), "alice", "declare")
    changes: list[int] = []
    watcher = RuleWatcher(reader, refresh_interval_s=3600,  # only a notification can deliver it
                          on_change=lambda _a, _b, after: changes.append(after.percent_bp
                                                                         if after else -1))
    await watcher.start()
    try:
        assert watcher.rollouts["products"].percent == 1
        for percent in (7, 12):
            await writer.apply("products", partial(ops.set_percent, percent=percent), "alice",
                               "ramp")
            await eventually(lambda p=percent: watcher.rollouts["products"].percent == p,
                             timeout_s=2)
        assert changes == [100, 700, 1200] and watcher.connected
    finally:
        await watcher.stop()


async def test_a_replace_needs_saying_so_and_starts_from_the_stored_revision(
        store: RuleStore) -> None:
    await store.create(rollout(percent=5), "alice", "declare")
    assert await store.revision("products") == 1 and await store.revision("other") == 0
    replaced = await store.create(rollout(percent=0, salt="again"), "bob", "redeclare",
                                  replace_existing=True)
    assert (replaced.revision, replaced.salt, replaced.updated_by) == (2, "again", "bob")
    assert [e.reason for e in await store.history("products")] == ["redeclare", "declare"]


async def _lose_everything(store: RuleStore) -> None:
    """What a FLUSHALL or a failover to an empty replica does to the store's data."""
    if isinstance(store, MemoryRuleStore):
        store.lose_everything()
        return
    assert isinstance(store, RedisRuleStore)
    keys = [key async for key in store.client.scan_iter(match=f"{store.prefix}:*")]
    await store.client.delete(*keys)


async def test_a_deletion_leaves_a_tombstone_and_an_audit_entry(store: RuleStore) -> None:
    declared = await store.create(rollout(percent=5), "alice", "declare")
    entry = await store.delete("products", declared.revision, "bob", "retired")
    assert (entry.revision, entry.actor, entry.deleted) == (2, "bob", True)
    assert await store.deleted("products") and await store.aliases() == []
    with pytest.raises(NotFoundError):
        await store.get("products")
    with pytest.raises(NotFoundError):
        await store.delete("products", 2, "bob", "twice")
    newest = (await store.history("products"))[0]
    assert (newest.deleted, newest.reason, newest.after.percent) == (True, "retired", 5)
    again = await store.create(rollout(percent=1), "carol", "back")  # revisions continue
    assert again.revision == 3 and not await store.deleted("products")
    assert await store.aliases() == ["products"]


async def test_a_lost_rule_is_restored_after_every_revision_seen(store: RuleStore) -> None:
    await store.create(rollout(percent=0), "alice", "declare")
    change = await store.apply("products", partial(ops.set_percent, percent=30), "alice", "ramp")
    snapshot = change.after
    with pytest.raises(TransitionError):
        await store.restore(snapshot, "bob", "nothing was lost")
    await _lose_everything(store)
    assert await store.aliases() == [] and not await store.deleted("products")
    restored = await store.restore(snapshot, "bob", "from the proxy's memory")
    assert (restored.revision, restored.percent) == (snapshot.revision + 1, 30)
    assert await store.get("products") == restored and await store.aliases() == ["products"]


async def test_guard_records_leases_and_ramp_plans(stores: tuple[RuleStore, RuleStore]) -> None:
    writer, reader = stores
    await writer.put_guard("products", "instance:a", b"counts of a")
    await writer.put_guard("products", "verdict", b"healthy")
    assert await reader.guard_records("products") == {"instance:a": b"counts of a",
                                                      "verdict": b"healthy"}
    await writer.drop_guard("products", "instance:a")
    assert await reader.guard_records("products") == {"verdict": b"healthy"}
    assert await reader.guard_records("other") == {}
    assert await writer.take_lease("products", "ramp", "a", 0.3)
    assert await writer.take_lease("products", "ramp", "a", 0.3)  # the holder extends it
    assert not await reader.take_lease("products", "ramp", "b", 0.3)
    assert await reader.take_lease("other", "ramp", "b", 0.3)  # leases are per alias
    await asyncio.sleep(0.4)
    assert await reader.take_lease("products", "ramp", "b", 0.3)  # expired: b takes it
    assert await reader.ramp("products") is None
    await writer.put_ramp("products", b"plan")
    assert await reader.ramp("products") == b"plan"
    await writer.put_ramp("products", None)
    assert await reader.ramp("products") is None
