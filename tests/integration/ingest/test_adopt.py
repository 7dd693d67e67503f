"""A collection an application wrote through the Qdrant API is adopted, backfilled, promoted.

qdrant-client creates `kb` before any alias names it and writes its own ids (integers and
UUIDs), vectors made by the L3 model outside embedshift's ingestion and LangChain-style
`page_content` payloads. Adopting it with the wrong model is refused with the measured cosine;
with L3 it becomes v1 without a point rewritten; an L6 v2 is backfilled from `page_content`,
verified, ramped and promoted, and the application's ids come back unchanged throughout.
"""

from __future__ import annotations

import asyncio
import uuid
import warnings
from pathlib import Path
from typing import Any

import pytest
from msgspec.structs import replace
from qdrant_client import QdrantClient, models

from proxy.models.builtin import L3_ID, L6_ID
from proxy.vectors.base import PointIn
from proxy.vectors.edge import EdgeStore
from proxy.web.keys import WATCHER
from rollout_rules.model import Target, Version
from tests.eventually import eventually, eventually_async
from tests.integration.conftest import ADMIN_TOKEN, Proxy, ProxyFactory
from tests.integration.qdrant_api.clients import TOPICS, WRITE_KEY, qdrant_api, version_checked

pytestmark = pytest.mark.integration
AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


def _ids(n: int) -> list[int | str]:
    """Half integers, half UUIDs: both kinds of id an application gives."""
    return [n * 10 if n % 2 else str(uuid.UUID(int=n + 1)) for n in range(n)]


async def _call(proxy: Proxy, method: str, path: str, body: Any = None,
                status: int = 200) -> Any:
    response = await proxy.client.request(method, path, json=body, headers=AUTH)
    answer = await response.json()
    assert response.status == status, (path, answer)
    return answer


async def test_a_collection_the_application_wrote_is_adopted_and_migrated(
        proxies: ProxyFactory, tmp_path: Path) -> None:
    proxy = await proxies.start(engine=EdgeStore(tmp_path / "qdrant"), refresh_interval_s=0.2,
                                qdrant_write_key=WRITE_KEY, data_dir=str(tmp_path / "data"))
    server, url = await qdrant_api(proxy)
    texts = [f"{topic}, note {n}" for n, topic in enumerate(TOPICS * 8)]
    ids = _ids(len(texts))
    l3 = proxies.engine.models[(L3_ID, "none")]  # the application's own encoder
    vectors = await asyncio.to_thread(l3.embed, texts)

    def write() -> QdrantClient:
        with warnings.catch_warnings():  # "api key over an insecure connection": loopback
            warnings.filterwarnings("ignore", message="Api key is used with an insecure")
            client = QdrantClient(url=url, api_key=WRITE_KEY, https=False,
                                  cloud_inference=True)
            version_checked()
        client.create_collection("kb", vectors_config=models.VectorParams(
            size=384, distance=models.Distance.COSINE))
        client.create_payload_index("kb", "metadata.n", models.PayloadSchemaType.INTEGER)
        client.upsert("kb", [models.PointStruct(
            id=i, vector=[float(x) for x in v],
            payload={"page_content": t, "metadata": {"n": n}})
            for n, (i, t, v) in enumerate(zip(ids, texts, vectors, strict=True))])
        return client

    client = await asyncio.to_thread(write)
    [mine] = await asyncio.to_thread(client.retrieve, "kb", [ids[0]])  # a UUID, as written
    assert mine.id == ids[0] and mine.payload == {"page_content": texts[0], "metadata": {"n": 0}}
    assert [c.name for c in (await asyncio.to_thread(client.get_collections)).collections] == \
        ["kb"]

    wrong = await _call(proxy, "POST", "/admin/aliases/docs/adopt",
                        {"collection": "kb", "model": L6_ID}, status=400)
    assert "median cosine" in wrong["error"]["message"], wrong
    adopted = await _call(proxy, "POST", "/admin/aliases/docs/adopt",
                          {"collection": "kb", "model": L3_ID})
    assert adopted["adopted"] and adopted["text_field"] == "page_content"
    assert adopted["median_cosine"] > 0.999 and adopted["points"] == len(texts)
    assert "docs" in proxy.app[WATCHER].rollouts  # served once the adoption is answered

    def query(user: str, text: str) -> list[Any]:
        from qdrant_client.context_headers import headers

        with headers({"x-qdrant-route-affinity": user}):
            return client.query_points("docs", limit=1, query=models.Document(
                text=text, model="any")).points

    [before] = await asyncio.to_thread(query, "alice", texts[5])
    assert before.id == ids[5] and before.payload == {"page_content": texts[5],
                                                      "metadata": {"n": 5}}

    rollout = proxy.app[WATCHER].rollouts["docs"]
    v2 = Version(name="v2", model=L6_ID, dimensions=384, target=Target(collection="docs_v2"))
    await proxy.rules.write(replace(rollout, versions=(*rollout.versions, v2), candidate="v2"),
                            rollout.revision, "tests", "add the candidate")
    await eventually(lambda: proxy.app[WATCHER].rollouts["docs"].candidate == "v2")
    await _backfill(proxy, len(texts))
    indexes = await proxy.store.inner.indexed_fields(Target(collection="docs_v2"))
    assert indexes.get("metadata.n") == "integer"  # v1's payload index, copied

    late = len(texts)  # the application's pipeline keeps writing into kb directly
    await proxy.store.inner.upsert(Target(collection="kb"), [PointIn(
        late, [float(x) for x in (await asyncio.to_thread(l3.embed, ["a late note"]))[0]],
        {"page_content": "a late note", "metadata": {"n": late}})])
    await _backfill(proxy, 1)  # run again: only what is new
    report = await _call(proxy, "POST", "/admin/aliases/docs/verify")
    assert report["passed"] and report["stable_documents"] == len(texts) + 1, report

    await _call(proxy, "POST", "/admin/aliases/docs/percent", {"percent": 100, "reason": "go"})
    await _call(proxy, "POST", "/admin/aliases/docs/promote", {"reason": "verified"})
    assert proxy.app[WATCHER].rollouts["docs"].stable == "v2"  # served once answered
    [after] = await asyncio.to_thread(query, "alice", texts[6])
    assert after.id == ids[6] and after.payload == {"page_content": texts[6],
                                                    "metadata": {"n": 6}}
    assert await proxy.store.inner.count(Target(collection="kb")) == len(texts) + 1  # as was
    await server.close()


async def _backfill(proxy: Proxy, expected: int) -> None:
    started = await _call(proxy, "POST", "/admin/aliases/docs/backfill", {"batch_size": 16})
    assert started["job"]["total_docs"] == expected, started

    async def done() -> bool:
        progress = await _call(proxy, "GET", "/admin/aliases/docs/backfill")
        assert progress["state"] != "failed", progress
        return bool(progress["state"] == "done")

    await eventually_async(done, timeout_s=120)


async def test_a_rule_declared_over_a_collection_embedshift_did_not_write_does_not_serve(
        proxies: ProxyFactory, tmp_path: Path) -> None:
    """`init` names an application's own collection as v1, without adopting it: nothing says
    the named model made its vectors, so the version does not serve from it (a 503 naming
    `adopt`), where it once answered L3's vectors searched with L6 at scores near 0."""
    from proxy.config import Settings
    from proxy.qdrant_api.plain import plain_version
    from proxy.state.client import connect
    from proxy.state.rulestore import RedisRuleStore
    from rollout_rules.model import Rollout

    engine = EdgeStore(tmp_path / "qdrant")
    own = plain_version("kb", 384, "cosine")
    await engine.ensure_collection(own.target, own)
    l3 = proxies.engine.models[(L3_ID, "none")]
    vectors = await asyncio.to_thread(l3.embed, TOPICS)
    await engine.upsert(own.target, [PointIn(n, [float(x) for x in v], {"page_content": t})
                                     for n, (t, v) in enumerate(zip(TOPICS, vectors,
                                                                    strict=True))])
    rules = RedisRuleStore(connect(Settings(), proxies.redis_url), proxies.prefix)
    declared = Rollout(alias="kb", stable="v1", candidate=None, versions=(Version(
        name="v1", model=L6_ID, dimensions=384, target=Target(collection="kb")),))
    await rules.create(declared, "tests", "init over an application's collection")
    await rules.aclose()
    proxy = await proxies.start(engine=engine, data_dir=str(tmp_path / "data"))
    answer = await proxy.client.post("/v1/aliases/kb/search", json={"query": "a frozen lake"})
    said = await answer.json()
    assert answer.status == 503, said
    assert "embedshift did not write" in said["error"]["message"]
    assert "embedshift adopt ALIAS --collection kb" in said["error"]["message"]
    ready = await (await proxy.client.get("/readyz")).json()
    assert "Adopt it instead" in ready["unavailable"]["kb/v1"]
