"""A served candidate's faults cost no search, no document and no secret.

Live queries keep answering (stable takes the candidate's users), the backfill slows through
429s and loses nothing, a model that changes under its name is caught and rolled back, and the
key is in no output.

The service is the package's fake (``FakeEmbeddingsService``, on the same contract suite as a
real server); the proxy, Redis, Qdrant's engine and the stable ONNX model are real."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import structlog
from aiohttp.test_utils import TestServer
from msgspec.structs import replace

from proxy.ingest.backfill import Options
from proxy.models.builtin import L3_ID
from proxy.models.catalog import add_served, open_model
from proxy.models.fake import FakeEmbeddingsService, HashModel
from proxy.models.loader import ModelCache
from proxy.models.served import ServedSpec
from proxy.vectors.edge import EdgeStore
from proxy.web.keys import BACKFILL, DRIFT
from rollout_rules.model import Rollout, Target, Version
from tests.eventually import eventually_async
from tests.integration.conftest import ADMIN_TOKEN, Engine, Proxy, ProxyFactory

KEY = "sk-served-test-2f9e61c0"
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
WORDS = ("jacket", "boots", "tent", "stove", "lantern", "rope", "map", "compass", "kettle",
         "blanket", "gloves", "scarf", "backpack", "canteen")


@dataclass
class Served:
    service: FakeEmbeddingsService
    models: ModelCache
    rollout: Rollout
    store: EdgeStore

    def documents(self, count: int, start: int = 0) -> list[dict[str, Any]]:
        return [{"id": i, "text": f"a {WORDS[i % len(WORDS)]} for trip {i} "
                                  f"{WORDS[(i * 7) % len(WORDS)]}"} for i in range(start, count)]


@pytest.fixture
async def served(tmp_path: Path, demo_engine: Engine, proxies: ProxyFactory
                 ) -> AsyncIterator[Served]:
    service = FakeEmbeddingsService(served_name="hash-embedder", key=KEY)
    server = TestServer(service.app(), host="127.0.0.1")
    await server.start_server()
    catalogue = tmp_path / "models"
    draft = ServedSpec(url=str(server.make_url("/v1")), model_id="hash-embedder", dimensions=0,
                       api_key_env="HASH_KEY", timeout_s=0.5, max_batch=16)
    await asyncio.to_thread(add_served, "hash", draft, catalogue, environ={"HASH_KEY": KEY})
    models = ModelCache(catalogue, load=lambda v: (
        demo_engine.models[(v.model, v.quantization)] if v.model == L3_ID
        else open_model(v, catalogue, 1, environ={"HASH_KEY": KEY})))
    versions = (Version(name="v1", model=L3_ID, dimensions=384, target=Target(collection="n_v1")),
                Version(name="v2", model="hash", dimensions=384,
                        target=Target(collection="n_v2")))
    rollout = Rollout(alias="notes", versions=versions, stable="v1", candidate="v2")
    store = EdgeStore(tmp_path / "qdrant")
    yield Served(service, models, rollout, store)
    await store.close()
    await server.close()


async def _start(proxies: ProxyFactory, served: Served, **settings: Any) -> Proxy:
    rules = proxies.app()[2]
    await rules.create(served.rollout, "tests", "declare")
    await rules.aclose()
    return await proxies.start(engine=served.store, models=served.models, **settings)


async def _searches(proxy: Proxy, users: range) -> list[dict[str, Any]]:
    async def one(user: int) -> dict[str, Any]:
        response = await proxy.client.post("/v1/aliases/notes/search", json={
            "query": f"{WORDS[user % len(WORDS)]} for trip {user}", "user_id": f"u{user % 60}"})
        assert response.status == 200, await response.text()
        found: dict[str, Any] = await response.json()
        return found
    return list(await asyncio.gather(*(one(user) for user in users)))


async def _percent(proxy: Proxy, percent: float) -> None:
    """Ramp through this proxy, which serves the new rule once it answers."""
    response = await proxy.client.post("/admin/aliases/notes/percent", headers=ADMIN,
                                       json={"percent": percent, "reason": "test"})
    assert response.status == 200, await response.text()


async def test_live_queries_keep_answering_through_every_fault_and_the_key_shows_nowhere(
        proxies: ProxyFactory, served: Served) -> None:
    with structlog.testing.capture_logs() as logs:
        proxy = await _start(proxies, served, drift_check_s=0, guard_tick_s=0)  # the guard
        response = await proxy.client.post("/v1/aliases/notes/documents", headers=ADMIN,
                                           json={"documents": served.documents(120)})
        assert response.status == 200, await response.text()
        await _percent(proxy, 50)
        calm = await _searches(proxy, range(0, 60))
        on_v2 = {i for i, found in enumerate(calm) if found["model_version"] == "v2"}
        assert 10 < len(on_v2) < 50  # both versions answer their users
        served.service.retry_after_s, served.service.hang_s = 0.2, 5.0

        async def v2_answers_again() -> bool:  # once the circuit lets a trial call through
            served.service.mode = None
            again = await _searches(proxy, range(10_000 + len(logs), 10_060 + len(logs)))
            return any(found["model_version"] == "v2" for found in again)
        faults = ("429", "500", "hang", "wrong_size", "wrong_count", "422")
        for round, fault in enumerate(faults, start=1):
            served.service.mode = fault
            during = await _searches(proxy, range(100 * round, 100 * round + 60))  # new texts
            assert {found["model_version"] for found in during} == {"v1"}, fault
            assert sum(found["rollout"]["reason"] == "fallback" for found in during) > 5, fault
            await eventually_async(v2_answers_again, timeout_s=15)
        assert set(served.service.faults) == set(faults)
        assert (await served.models.get(served.rollout.version("v2"))).circuit.opened >= 1  # type: ignore[attr-defined]
        seen = [await (await proxy.client.get(path)).text()
                for path in ("/metrics", "/readyz", "/admin/aliases/notes")]
    assert "embedshift_fallbacks" in seen[0] and 'embedshift_served_calls{model="hash"' in seen[0]
    assert KEY not in "".join(seen) + repr(logs)
    assert any(line.get("event") == "candidate_failed" and "429" in line.get("error", "")
               for line in logs)
    refused = [line["error"] for line in logs if line.get("event") == "candidate_failed"
               and "answered 422" in line.get("error", "")]
    assert refused and all(e.endswith("answered 422 (invalid_request_error)") for e in refused)
    assert not re.search(r"for trip 6\d\d", repr(logs))  # the 422 round's queries (repeated)


async def test_the_backfill_slows_through_429s_and_resumes_losing_nothing(
        proxies: ProxyFactory, served: Served) -> None:
    stable_only = replace(served.rollout, candidate=None, versions=served.rollout.versions[:1])
    served.rollout = stable_only
    proxy = await _start(proxies, served, drift_check_s=0)
    for start in range(0, 600, 200):
        response = await proxy.client.post("/v1/aliases/notes/documents", headers=ADMIN, json={
            "documents": served.documents(start + 200, start)})
        assert response.status == 200, await response.text()
    versions = (*stable_only.versions, Version(name="v2", model="hash", dimensions=384,
                                               target=Target(collection="n_v2")))
    current = await proxy.rules.get("notes")
    await proxy.rules.write(replace(current, versions=versions, candidate="v2"),
                            current.revision, "tests", "add the candidate")
    rollout = await proxy.rules.get("notes")
    served.service.retry_after_s = 0.3
    before = sum(served.service.calls)  # the catalogue's checks
    served.service.storm("429", 12)
    served.service.storm("500", 3)
    backfill = proxy.app[BACKFILL]
    await backfill.start(rollout, Options(workers=2, batch_size=50, rate=None))
    await asyncio.wait_for(asyncio.gather(*backfill.tasks["notes"]), 120)
    progress = await backfill.progress(rollout)
    assert progress.state == "done" and progress.job is not None, progress
    assert progress.job.done_docs == 600 and progress.job.done_batches == 12, progress
    assert not progress.job.failed, progress
    assert served.service.faults == {"429": 12, "500": 3}
    assert await served.store.count(rollout.version("v2").target) == 600
    assert sum(served.service.calls) - before == 600  # retried in place: none done twice


async def test_a_model_changed_under_its_name_is_caught_and_its_candidate_rolled_back(
        proxies: ProxyFactory, served: Served) -> None:
    proxy = await _start(proxies, served, drift_check_s=0.3)
    await _percent(proxy, 30)
    drift = proxy.app[DRIFT]

    async def probed() -> bool:
        return "hash" in drift.findings and drift.findings["hash"].cosine == pytest.approx(
            1.0, abs=1e-4)
    await eventually_async(probed, timeout_s=10)
    served.service.model = HashModel(model_id="hash-v2-weights")  # same served name

    async def rolled_back() -> bool:
        rule = await proxy.rules.get("notes")
        return rule.state.value == "rolled_back" and rule.percent == 0
    await eventually_async(rolled_back, timeout_s=10)
    ready = await (await proxy.client.get("/readyz")).json()
    assert ready["served_models"]["hash"]["drifted"] is True
    assert ready["served_models"]["hash"]["cosine"] < 0.999
    metrics = await (await proxy.client.get("/metrics")).text()
    assert 'embedshift_model_drifted{model="hash"} 1.0' in metrics
    page = await (await proxy.client.get("/ui/status.json")).json()
    assert page["aliases"][0]["drifted"]["v2"].startswith("model hash drifted (probe cosine")
    served.service.mode = "500"  # the service goes down: the drift is not forgotten
    found = (await drift.check())["hash"]
    assert found.drifted and found.cosine is None and "answered 500" in found.error
    history = await (await proxy.client.get("/admin/aliases/notes/history",
                                            headers=ADMIN)).json()
    assert any(entry["actor"] == "drift-watch" and "drift: model hash" in entry["reason"]
               for entry in history), history


async def test_a_failing_served_stable_answers_503_naming_why(proxies: ProxyFactory,
                                                             served: Served) -> None:
    v1 = Version(name="v1", model="hash", dimensions=384, target=Target(collection="h_v1"))
    served.rollout = Rollout(alias="notes", versions=(v1,), stable="v1")
    proxy = await _start(proxies, served, drift_check_s=0)
    response = await proxy.client.post("/v1/aliases/notes/documents", headers=ADMIN,
                                       json={"documents": served.documents(20)})
    assert response.status == 200, await response.text()
    served.service.mode = "500"
    response = await proxy.client.post("/v1/aliases/notes/search",
                                       json={"query": "a kettle for trip 3", "user_id": "u1"})
    body = await response.text()
    assert response.status == 503, body
    assert "model hash" in body and "500" in body and KEY not in body


async def test_a_live_write_through_a_failing_served_candidate_answers_fast(
        proxies: ProxyFactory, served: Served) -> None:
    """The candidate's service answers 500: a document write through the API is answered
    within a query's patience (it once waited the backfill's 600 s), a 207 saying stable holds
    the documents and the backfill writes the candidate's copy; the backfill then does."""
    proxy = await _start(proxies, served, drift_check_s=0, guard_tick_s=0)
    served.service.mode = "500"
    started = asyncio.get_running_loop().time()
    response = await proxy.client.post("/v1/aliases/notes/documents", headers=ADMIN,
                                       json={"documents": served.documents(20)})
    took = asyncio.get_running_loop().time() - started
    answer = await response.json()
    assert response.status == 207, answer
    print(f"a write of 20 documents answered 207 after {took:.2f} s")
    assert took < 30, took  # the live patience (1.5 x 0.5 s) and the query's work, not 600 s
    [why] = {result["failed"]["v2"] for result in answer["results"]}
    assert set(answer["results"][0]["written"]) == {"v1"}
    assert "the backfill writes it from stable's copy" in why and "answered 500" in why, why
    served.service.mode = None
    started_backfill = await proxy.client.post("/admin/aliases/notes/backfill", headers=ADMIN)
    assert started_backfill.status in (200, 202), await started_backfill.text()

    async def caught_up() -> bool:
        return await served.store.count(served.rollout.version("v2").target) == 20
    await eventually_async(caught_up, timeout_s=60)
