"""The rules snapshot follows notifications, fails static and never goes back a revision."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from functools import partial

import pytest

from proxy.state.base import OnSubscribed
from proxy.state.memory import MemoryRuleStore
from proxy.state.watcher import RuleWatcher
from rollout_rules import ops
from tests.eventually import eventually
from tests.unit.core.rollouts import rollout


@pytest.fixture
async def store() -> MemoryRuleStore:
    store = MemoryRuleStore()
    await store.create(rollout(percent=2), "alice", "declare")
    await store.set_coverage("products", "v2", 1, 4)
    return store


@pytest.fixture
async def watcher(store: MemoryRuleStore) -> AsyncIterator[RuleWatcher]:
    watcher = RuleWatcher(store, refresh_interval_s=0.05)
    await watcher.start()
    yield watcher
    await watcher.stop()


async def test_the_snapshot_holds_rules_and_coverage(watcher: RuleWatcher) -> None:
    assert watcher.rollouts["products"].percent == 2
    assert watcher.coverage == {"products": {"v2": 0.25}}
    assert watcher.connected


async def test_a_store_outage_keeps_the_last_good_rules_and_recovery_is_automatic(
        store: MemoryRuleStore, watcher: RuleWatcher) -> None:
    store.take_down()
    await eventually(lambda: not watcher.connected, timeout_s=2)
    assert watcher.rollouts["products"].percent == 2
    assert watcher.last_error is not None and "down" in watcher.last_error
    store.bring_up()
    await store.apply("products", partial(ops.set_percent, percent=9), "alice", "after")
    await eventually(lambda: watcher.rollouts["products"].percent == 9, timeout_s=2)
    await eventually(lambda: watcher.connected, timeout_s=2)


async def test_an_older_revision_never_replaces_a_newer_one(store: MemoryRuleStore,
                                                            watcher: RuleWatcher) -> None:
    old = watcher.rollouts["products"]
    await store.apply("products", partial(ops.set_percent, percent=5), "alice", "ramp")
    await eventually(lambda: watcher.rollouts["products"].revision == 2, timeout_s=2)
    watcher._install("products", old)  # a slow read of revision 1 arrives late
    assert watcher.rollouts["products"].percent == 5


async def test_a_rule_lost_by_the_store_is_kept_until_restored(store: MemoryRuleStore,
                                                               watcher: RuleWatcher) -> None:
    kept = watcher.rollouts["products"]
    store.lose_everything()  # a FLUSHALL, or a failover to an empty replica
    await eventually(lambda: "products" in watcher.vanished, timeout_s=2)
    await asyncio.sleep(0.2)  # several full reads later, still served
    assert watcher.rollouts["products"] == kept and watcher.connected
    assert watcher.coverage == {"products": {"v2": 0.25}}
    assert "restore" in watcher.vanished["products"]
    restored = await store.restore(kept, "bob", "from memory")
    await eventually(lambda: "products" not in watcher.vanished, timeout_s=2)
    assert watcher.rollouts["products"] == restored


async def test_a_redeclared_alias_wins_though_the_store_counts_from_one_again(
        store: MemoryRuleStore, watcher: RuleWatcher) -> None:
    await store.apply("products", partial(ops.set_percent, percent=5), "alice", "ramp")
    await eventually(lambda: watcher.rollouts["products"].revision == 2, timeout_s=2)
    store.lose_everything()
    await eventually(lambda: "products" in watcher.vanished, timeout_s=2)
    fresh = await store.create(rollout(percent=1), "carol", "declared again")
    assert fresh.revision == 1
    await eventually(lambda: watcher.rollouts["products"] == fresh, timeout_s=2)
    assert watcher.vanished == {}


async def test_a_deleted_alias_is_dropped_by_every_watcher(store: MemoryRuleStore,
                                                           watcher: RuleWatcher) -> None:
    await store.delete("products", 1, "alice", "retired")
    await eventually(lambda: "products" not in watcher.rollouts, timeout_s=2)
    assert watcher.vanished == {}


class _SwallowsOneCancel(MemoryRuleStore):
    """Loses the first cancellation, as Python 3.11's asyncio.wait_for (inside redis-py) does
    when the cancel arrives just as the command it waits on completes."""

    async def changes(self, on_subscribed: OnSubscribed = None
                      ) -> AsyncIterator[tuple[str, int]]:
        swallowed = False
        while True:
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                if swallowed:
                    raise
                swallowed = True
        yield ("never", 0)  # an async generator, like the real one


async def test_stop_finishes_even_when_a_cancellation_is_lost() -> None:
    watcher = RuleWatcher(_SwallowsOneCancel(), refresh_interval_s=3600)
    await watcher.start()
    await asyncio.sleep(0)  # let the listener reach its wait
    stopping = asyncio.create_task(watcher.stop())
    await asyncio.wait({stopping}, timeout=5)  # unlike wait_for, never cancels stop() itself
    assert stopping.done(), "stop() waited for ever on a listener that lost its cancellation"
