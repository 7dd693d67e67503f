"""One alias's broken model or collection takes out that version only; a failed start cleans up."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from msgspec.structs import replace
from opentelemetry.sdk.trace import TracerProvider

from proxy.config import Settings
from proxy.models.loader import ModelCache
from proxy.state.memory import MemoryRuleStore
from proxy.web.app import Deps, make_app
from rollout_rules.model import Rollout
from tests.unit.core.rollouts import rollout
from tests.unit.fakes import BreakableStore, fake_models, load_catalogue


def _with_v2_model(declared: Rollout, model: str) -> Rollout:
    return replace(declared, versions=(declared.versions[0],
                                       replace(declared.versions[1], model=model)))


async def _client(rollouts: list[Rollout], models: ModelCache,
                  vectors: BreakableStore | None = None) -> TestClient[Any, Any]:
    if vectors is None:
        vectors = BreakableStore()
        await load_catalogue(vectors, rollout())  # p_v1 by m/l3, p_v2 by m/l6
    rules = MemoryRuleStore()
    for declared in rollouts:
        await rules.create(declared, "ops", "declare")
        await rules.set_coverage(declared.alias, "v2", 1, 1)  # the gate lets the percent through
    app = make_app(Settings(), Deps(rules_store=rules, vector_store=vectors,
                                    tracer_provider=TracerProvider(), models=models))
    client: TestClient[Any, Any] = TestClient(TestServer(app, host="127.0.0.1"))
    await client.start_server()
    return client


@pytest.fixture
async def cleanup() -> AsyncIterator[list[TestClient[Any, Any]]]:
    clients: list[TestClient[Any, Any]] = []
    yield clients
    for client in clients:
        await client.close()


async def _search(client: TestClient[Any, Any], alias: str) -> tuple[int, Any]:
    response = await client.post(f"/v1/aliases/{alias}/search",
                                 json={"query": "warm jacket", "user_id": "u1"})
    return response.status, await response.json()


async def test_a_mismatched_collection_takes_out_its_version_and_stable_answers(
        cleanup: list[TestClient[Any, Any]]) -> None:
    everyone = _with_v2_model(rollout(percent=100), "m/other")  # p_v2 was encoded with m/l6
    client = await _client([everyone], fake_models())
    cleanup.append(client)
    status, answer = await _search(client, "products")
    assert status == 200 and (answer["model_version"], answer["rollout"]["reason"]) == \
        ("v1", "fallback")
    ready = await client.get("/readyz")
    detail = await ready.json()
    assert ready.status == 200
    assert "v2 is m/other, collection p_v2 was encoded with m/l6" in \
        detail["unavailable"]["products/v2"]


async def test_one_alias_with_a_broken_model_does_not_stop_another(
        cleanup: list[TestClient[Any, Any]]) -> None:
    docs = rollout(alias="docs", versions=[
        {"name": "v1", "model": "m/typo", "dimensions": 384, "target": {"collection": "p_v1"}},
        {"name": "v2", "model": "m/l6", "dimensions": 384, "target": {"collection": "p_v2"}}])
    client = await _client([rollout(), docs], fake_models(unloadable="m/typo"))
    cleanup.append(client)
    status, answer = await _search(client, "products")
    assert status == 200 and answer["hits"]
    status, answer = await _search(client, "docs")
    assert status == 503 and "docs: version v1 is unavailable: model m/typo" in \
        answer["error"]["message"]
    detail = await (await client.get("/readyz")).json()
    assert detail["ready"] and set(detail["unavailable"]) == {"docs/v1"}


class _ExplodingStore(BreakableStore):
    async def describe(self, target: Any) -> Any:
        raise RuntimeError("a bug in the store adapter")


def _background() -> set[str]:
    return {t.get_name() for t in asyncio.all_tasks() if t is not asyncio.current_task()}


async def test_a_failed_start_up_stops_everything_it_began() -> None:
    before = _background()
    rules = MemoryRuleStore()
    await rules.create(rollout(), "ops", "declare")
    app = make_app(Settings(), Deps(rules_store=rules, vector_store=_ExplodingStore(),
                                    tracer_provider=TracerProvider(), models=fake_models()))
    runner = web.AppRunner(app)
    with pytest.raises(RuntimeError, match="a bug in the store adapter"):
        await runner.setup()
    await asyncio.sleep(0)
    assert _background() - before == set()  # no rules-listen / rules-poll task left behind
