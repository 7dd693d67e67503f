"""A rules Redis emptied under traffic fails no search, a restart writes nothing over it.

Restore and delete (of a vanished alias too) settle it."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import pytest

from proxy.cli.serve import prepare_demo
from proxy.config import Settings
from proxy.ingest.writer import Ingestor
from proxy.state.client import connect
from proxy.state.redis_server import EmbeddedRedis
from proxy.state.rulestore import RedisRuleStore
from proxy.web.keys import WATCHER
from tests.eventually import eventually
from tests.integration.conftest import ADMIN_TOKEN, ProxyFactory

pytestmark = pytest.mark.integration
AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


async def test_redis_restarted_without_its_data_fails_no_search(
        own_redis: tuple[EmbeddedRedis, ProxyFactory]) -> None:
    server, factory = own_redis
    await factory.declare(percent=30)
    proxies = [await factory.start(refresh_interval_s=0.1) for _ in range(2)]
    statuses: list[int] = []
    stop = asyncio.Event()

    async def traffic() -> None:
        i = 0
        while not stop.is_set():
            proxy = proxies[i % 2]
            response = await proxy.client.post("/v1/aliases/products/search",
                                               json={"query": f"tent {i}", "user_id": f"u{i}"})
            statuses.append(response.status)
            i += 1
            await asyncio.sleep(0.005)

    running = asyncio.create_task(traffic())
    await asyncio.sleep(0.3)
    server.kill()
    for data in server.dir.glob("appendonly*"):  # as a failover to an empty replica
        shutil.rmtree(data) if data.is_dir() else data.unlink()
    server.start()
    for proxy in proxies:
        await eventually(lambda p=proxy: "products" in p.app[WATCHER].vanished, timeout_s=5)
    await asyncio.sleep(0.5)  # more traffic and more full reads of an empty store
    for proxy in proxies:
        ready = await proxy.client.get("/readyz")
        detail = await ready.json()
        assert ready.status == 200 and "products" in detail["rules"]["vanished"]
        metrics = await (await proxy.client.get("/metrics")).text()
        assert 'embedshift_rules_vanished{alias="products"} 1.0' in metrics
    stop.set()
    await running
    assert len(statuses) > 20 and set(statuses) == {200}, sorted(set(statuses))

    restored = await proxies[0].client.post("/admin/aliases/products/restore", headers=AUTH,
                                            json={"reason": "redis lost its data"})
    assert restored.status == 200, await restored.text()
    assert (await restored.json())["percent"] == 30
    assert await proxies[0].rules.coverage("products") == {"v1": 1.0, "v2": 1.0}
    for proxy in proxies:
        await eventually(lambda p=proxy: not p.app[WATCHER].vanished, timeout_s=5)
    deleted = await proxies[1].client.request("DELETE", "/admin/aliases/products",
                                              headers=AUTH, json={"reason": "retired"})
    assert deleted.status == 200 and (await deleted.json())["deleted"] is True
    for proxy in proxies:
        await eventually(lambda p=proxy: "products" not in p.app[WATCHER].rollouts,
                         timeout_s=5)
        gone = await proxy.client.post("/v1/aliases/products/search", json={"query": "x"})
        assert gone.status == 404


async def test_a_restarted_demo_proxy_writes_nothing_over_a_lost_rule(
        own_redis: tuple[EmbeddedRedis, ProxyFactory], tmp_path: Path) -> None:
    """Redis loses its data under two proxies; one restarts on embedded defaults (the demo):
    it declares nothing (the data folder declared the demo before), every proxy keeps the
    operator's rule, which is restored at its revision, percent and coverage; a vanished
    alias can also be deleted from a proxy that still holds it."""
    server, factory = own_redis
    declared = await factory.declare(percent=60)
    proxies = [await factory.start(refresh_interval_s=0.1) for _ in range(2)]
    for proxy in proxies:
        await eventually(lambda p=proxy: "products" in p.app[WATCHER].rollouts)
    marker = tmp_path / "data" / "demo-declared"
    marker.parent.mkdir()
    marker.write_text("products declared at revision 1\n")  # this folder's demo, long ago
    server.kill()
    for data in server.dir.glob("appendonly*"):
        shutil.rmtree(data) if data.is_dir() else data.unlink()
    server.start()
    for proxy in proxies:
        await eventually(lambda p=proxy: "products" in p.app[WATCHER].vanished, timeout_s=5)
    rules = RedisRuleStore(connect(Settings(), server.url), factory.prefix)
    engine = factory.engine
    await prepare_demo(rules, Ingestor(engine.store, rules, engine.model_cache(
        factory.models_dir)), marker)  # the restarted proxy's start-up
    assert await rules.aliases() == [] and await rules.coverage("products") == {}
    for proxy in proxies:
        kept = proxy.app[WATCHER].rollouts["products"]
        assert (kept.revision, kept.percent) == (declared.revision, 60)
    restored = await proxies[1].client.post("/admin/aliases/products/restore", headers=AUTH,
                                            json={"reason": "redis lost its data"})
    assert restored.status == 200, await restored.text()
    back = await rules.get("products")
    assert back.percent == 60 and back.revision > declared.revision
    assert await rules.coverage("products") == {"v1": 1.0, "v2": 1.0}

    await rules.client.flushall()  # lost again: this time the operator deletes it
    await eventually(lambda: "products" in proxies[0].app[WATCHER].vanished, timeout_s=5)
    deleted = await proxies[0].client.request("DELETE", "/admin/aliases/products",
                                              headers=AUTH, json={"reason": "retired"})
    assert deleted.status == 200, await deleted.text()
    for proxy in proxies:
        await eventually(lambda p=proxy: "products" not in p.app[WATCHER].rollouts,
                         timeout_s=5)
    assert [e.reason for e in await rules.history("products", 2)] == [
        "retired", "restored from memory to be deleted: retired"]
    await rules.aclose()
