"""Every process calling a served model shares one rate budget and one circuit, through Redis.

Two models stand for two proxies (or a proxy and a backfill worker) calling the same service:
together they stay inside its requests a minute, and once one has opened the circuit the other
holds back without calling. Without sharing, each process would spend the whole budget."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from aiohttp.test_utils import TestServer

from proxy.config import Settings
from proxy.models.fake import FakeEmbeddingsService
from proxy.models.served import ServedModel, ServedSpec
from proxy.state.client import connect
from proxy.state.limits import RedisLimits
from proxy.state.redis_server import EmbeddedRedis
from rollout_rules.errors import ModelError

pytestmark = pytest.mark.integration


@pytest.fixture
async def service() -> AsyncIterator[tuple[FakeEmbeddingsService, str]]:
    fake = FakeEmbeddingsService(served_name="hash-embedder")
    server = TestServer(fake.app(), host="127.0.0.1")
    await server.start_server()
    yield fake, str(server.make_url("/v1"))
    await server.close()


@pytest.fixture
async def limits(redis_server: EmbeddedRedis, prefix: str) -> AsyncIterator[RedisLimits]:
    client = connect(Settings(), redis_server.url)
    yield RedisLimits(client, prefix)
    await client.aclose()


def _models(url: str, limits: RedisLimits | None) -> list[ServedModel]:
    spec = ServedSpec(url=url, model_id="hash-embedder", dimensions=384, rpm=10,
                      timeout_s=0.5, max_concurrency=8)
    return [ServedModel(spec, "hash", limits=limits) for _ in range(2)]


async def _live_calls(models: list[ServedModel], each: int) -> int:
    async def one(model: ServedModel, n: int) -> bool:
        try:
            await model.aembed([f"text {n}"], live=True)
            return True
        except ModelError:
            return False
    done = await asyncio.gather(*(one(model, n) for model in models for n in range(each)))
    for model in models:
        await model.aclose()
    return sum(done)


@pytest.mark.parametrize("shared", [True, False])
async def test_two_processes_together_stay_inside_the_services_rate(
        service: tuple[FakeEmbeddingsService, str], limits: RedisLimits, shared: bool) -> None:
    fake, url = service
    answered = await _live_calls(_models(url, limits if shared else None), each=10)
    if shared:  # 10 a minute between them: the rest give up within a query's patience
        assert answered == len(fake.calls) == 10
    else:  # each its own budget: twice what the service allows
        assert answered == len(fake.calls) == 20


async def test_a_circuit_one_process_opened_holds_the_other_back(
        service: tuple[FakeEmbeddingsService, str], limits: RedisLimits) -> None:
    fake, url = service
    first, second = _models(url, limits)
    fake.mode = "500"
    for n in range(5):  # five failures in a row open the first's circuit
        with pytest.raises(ModelError):
            await first.aembed([f"failing {n}"], live=True)
    assert first.circuit.opened == 1
    asked = sum(fake.faults.values())
    with pytest.raises(ModelError):
        await second.aembed(["held back"], live=True)
    assert sum(fake.faults.values()) == asked  # the second never called the failing service
    for model in (first, second):
        await model.aclose()
