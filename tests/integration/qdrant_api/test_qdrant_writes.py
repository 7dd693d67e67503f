"""Writes through the Qdrant API keep the writer's ids and reach every version.

qdrant-client upserts Documents (written into every active version, as ingestion writes them)
and points with vectors of its own (into stable's space, their `page_content` re-encoded into
the candidate by the backfill); retrieve, scroll and count read the caller's version, deletes
reach every version; writes need the write key. Each test runs over REST and over gRPC.
"""

from __future__ import annotations

import asyncio
import uuid
import warnings
from collections.abc import AsyncIterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from qdrant_client import QdrantClient, models
from qdrant_client.context_headers import headers

from proxy.ingest.documents import point_id
from proxy.web.keys import INGESTOR, SEARCHER
from tests.eventually import eventually_async
from tests.integration.conftest import ADMIN_TOKEN, Proxy, ProxyFactory
from tests.integration.qdrant_api.clients import (
    WIRES,
    notes_proxy,
    qdrant_api,
    qdrant_grpc,
    refusal,
    version_checked,
    wire_args,
)

pytestmark = pytest.mark.integration
WRITE_KEY = "qdrant-write-key-for-tests"
NOTE = "c0ffee00-1234-5678-9abc-def012345678"
TEXTS: dict[int | str, str] = {
    1: "a glacier lake frozen in winter", 2: "a harbour crane unloading ships",
    3: "a desert road at noon", NOTE: "a lighthouse on a stormy coast"}


class Served:
    def __init__(self, proxy: Proxy, url: str, grpc_port: int | None = None) -> None:
        self.proxy, self.url, self.grpc_port = proxy, url, grpc_port


@pytest.fixture(params=WIRES)
async def served(proxies: ProxyFactory, tmp_path: Path, request: pytest.FixtureRequest
                 ) -> AsyncIterator[Served]:
    proxy = await notes_proxy(proxies, tmp_path, qdrant_write_key=WRITE_KEY)
    server, url = await qdrant_api(proxy)
    edge = await qdrant_grpc(proxy) if request.param == "grpc" else None
    yield Served(proxy, url, edge.port if edge is not None else None)
    if edge is not None:
        await edge.stop(0)
    await server.close()


def _client(served: Served, key: str | None = WRITE_KEY) -> QdrantClient:
    with warnings.catch_warnings():  # "api key over an insecure connection": loopback here
        warnings.simplefilter("ignore")
        client = QdrantClient(**wire_args(served.url, served.grpc_port), api_key=key,
                              cloud_inference=True, https=False)
        version_checked()
    return client


def _document(text: str) -> models.Document:
    return models.Document(text=text, model="any")


async def test_documents_reach_every_version_under_the_writers_ids(served: Served) -> None:
    client = await asyncio.to_thread(_client, served)
    points = [models.PointStruct(id=i, vector=_document(text), payload={"n": str(i)})
              for i, text in TEXTS.items()]
    done = await asyncio.to_thread(client.upsert, "notes", points)
    assert done.status == models.UpdateStatus.COMPLETED
    store = served.proxy.store.inner
    rollout = served.proxy.app[SEARCHER].rollout("notes")
    for version in rollout.versions:  # every active version, encoded by its own model
        assert await store.count(version.target) == 4

    def read(user: str) -> tuple[list[Any], list[Any], int, list[Any]]:
        with headers({"x-qdrant-route-affinity": user}):
            hits = client.query_points("notes", query=_document("lighthouse storm"), limit=2)
            got = client.retrieve("notes", [1, NOTE], with_vectors=True)
            total = client.count("notes").count
            scrolled, _ = client.scroll("notes", limit=10)
        return hits.points, got, total, scrolled

    hits, got, total, scrolled = await asyncio.to_thread(read, "alice")
    assert str(hits[0].id) == NOTE  # the UUID the writer gave, not a point id of embedshift's
    assert all(isinstance(r.vector, list) and len(r.vector) == 384 for r in got)
    assert sorted((str(r.id), r.payload) for r in got) == [
        ("1", {"n": "1"}), (NOTE, {"n": NOTE})]  # no envelope
    assert total == 4 and sorted(str(r.id) for r in scrolled) == sorted(map(str, TEXTS))
    paged = await asyncio.to_thread(_pages, client, "notes", 3)
    assert [len(p) for p in paged] == [3, 1]
    assert sorted(i for page in paged for i in page) == sorted(map(str, TEXTS))

    await asyncio.to_thread(client.delete, "notes", models.PointIdsList(points=[1, 99]))
    for version in rollout.versions:
        assert await store.count(version.target) == 3
    assert await asyncio.to_thread(client.retrieve, "notes", [1]) == []

    by_n = models.Filter(must=[models.FieldCondition(key="n", match=models.MatchValue(
        value="2"))])
    assert (await asyncio.to_thread(client.count, "notes", by_n)).count == 1
    found, _ = await asyncio.to_thread(lambda: client.scroll("notes", scroll_filter=by_n))
    assert [r.id for r in found] == [2]
    await asyncio.to_thread(client.delete, "notes", models.FilterSelector(filter=by_n))
    for version in rollout.versions:  # by filter too, from every version
        assert await store.count(version.target) == 2

    def change_payloads() -> None:
        client.set_payload("notes", {"tag": "kept", "n": "three"}, points=[3])
        client.overwrite_payload("notes", {"only": "this"}, points=[NOTE])
        client.delete_payload("notes", ["tag"], points=models.FilterSelector(filter=models.Filter(
            must=[models.FieldCondition(key="n", match=models.MatchValue(value="three"))])))
        client.set_payload("notes", {"seen": True}, points=[3])

    await asyncio.to_thread(change_payloads)
    for version in rollout.versions:  # every version, the envelope untouched
        stored = {p.id: p.payload for p in await store.retrieve(version.target, [
            3, point_id(NOTE, version)])}
        assert {k: v for k, v in stored[3].items() if k != "_embedshift"} == {
            "n": "three", "seen": True}
        assert {k: v for k, v in stored[point_id(NOTE, version)].items()
                if k != "_embedshift"} == {"only": "this"}
        assert all(p["_embedshift"]["text"] for p in stored.values())
    await asyncio.to_thread(client.clear_payload, "notes", [3])
    [cleared] = await asyncio.to_thread(client.retrieve, "notes", [3])
    assert cleared.payload == {}
    with pytest.raises(Exception) as refused:  # either wire's refusal
        await asyncio.to_thread(client.set_payload, "notes", {"_embedshift": {}}, [3])
    assert refusal(refused.value)[0] == 400


def _pages(client: QdrantClient, collection: str, size: int) -> list[list[str]]:
    """Every page of a scroll, by the offsets it answers: the writer's ids, as every answer."""
    seen, offset = [], None
    while True:
        page, offset = client.scroll(collection, limit=size, offset=offset)
        seen.append([str(r.id) for r in page])
        if offset is None:
            return seen
        assert str(offset) in map(str, TEXTS)


async def test_the_writers_own_vectors_go_to_stable_and_the_backfill_brings_their_text(
        served: Served) -> None:
    rollout = served.proxy.app[SEARCHER].rollout("notes")
    stable = rollout.version(rollout.stable)
    model = served.proxy.app[INGESTOR].models
    encoder = await model.get(stable)
    vectors = await asyncio.to_thread(encoder.embed_many, list(TEXTS.values()))
    client = await asyncio.to_thread(_client, served)
    points = [models.PointStruct(id=i, vector=[float(x) for x in vector],
                                 payload={"page_content": text, "metadata": {"i": str(i)}})
              for (i, text), vector in zip(TEXTS.items(), vectors, strict=True)]
    await asyncio.to_thread(client.upsert, "notes", points)
    store = served.proxy.store.inner
    candidate = rollout.version(rollout.candidate or "")
    assert await store.count(stable.target) == 4 and await store.describe(candidate.target) \
        is None
    answer = await served.proxy.client.post(
        "/admin/aliases/notes/backfill", json={"batch_size": 2},
        headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
    assert answer.status == 200, await answer.text()

    async def done() -> bool:
        progress = await served.proxy.client.get(
            "/admin/aliases/notes/backfill", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
        return bool((await progress.json())["state"] == "done")

    await eventually_async(done, timeout_s=60)
    assert await store.count(candidate.target) == 4  # re-encoded from page_content
    hits = await served.proxy.client.post("/v1/aliases/notes/search", json={
        "query": "lighthouse storm", "version": None, "limit": 1})
    assert (await hits.json())["hits"][0]["id"] == NOTE


async def test_writes_need_the_write_key_and_a_vector_that_fits(served: Served) -> None:
    point = models.PointStruct(id=5, vector=_document("a note"))
    for key, status in ((None, 401), ("wrong", 401)):
        client = await asyncio.to_thread(_client, served, key)
        with pytest.raises(Exception) as refused:  # either wire's refusal
            await asyncio.to_thread(client.upsert, "notes", [point])
        assert refusal(refused.value)[0] == status
    client = await asyncio.to_thread(_client, served)
    with pytest.raises(Exception) as refused:  # either wire's refusal
        await asyncio.to_thread(client.upsert, "notes", [models.PointStruct(id=5,
                                                                           vector=[0.5] * 7)])
    assert refusal(refused.value)[0] == 400 and "has 7 numbers" in refusal(refused.value)[1]
    with pytest.raises(Exception) as refused:  # either wire's refusal
        await asyncio.to_thread(client.upsert, "notes", [models.PointStruct(
            id=str(uuid.UUID(int=5)), vector=_document("x"), payload={"_embedshift": 1})])
    assert refusal(refused.value)[0] == 400 and "embedshift's own" in refusal(refused.value)[1]


@pytest.mark.parametrize("wire", WIRES)
async def test_without_a_write_key_writes_are_off(proxies: ProxyFactory, wire: str) -> None:
    await proxies.declare()
    proxy = await proxies.start()
    server, url = await qdrant_api(proxy)
    edge = await qdrant_grpc(proxy) if wire == "grpc" else None
    port = edge.port if edge is not None else None
    client = await asyncio.to_thread(_client, Served(proxy, url, port), None)
    with pytest.raises(Exception) as refused:  # either wire's refusal
        await asyncio.to_thread(client.upsert, "products",
                                [models.PointStruct(id=5, vector=_document("a note"))])
    assert refusal(refused.value)[0] == 403
    assert "EMBEDSHIFT_QDRANT_WRITE_KEY" in refusal(refused.value)[1]
    if edge is not None:
        await edge.stop(0)
    await server.close()


async def test_a_payload_index_reaches_every_version_never_on_embedshifts_keys(
        served: Served) -> None:
    client = await asyncio.to_thread(_client, served)
    await asyncio.to_thread(client.upsert, "notes", [
        models.PointStruct(id=i, vector=_document(text), payload={"n": str(i)})
        for i, text in TEXTS.items()])
    await asyncio.to_thread(client.create_payload_index, "notes", "n",
                            models.PayloadSchemaType.KEYWORD)
    with pytest.raises(Exception) as refused:  # either wire's refusal
        await asyncio.to_thread(client.create_payload_index, "notes", "_embedshift.text",
                                models.PayloadSchemaType.TEXT)
    assert refusal(refused.value)[0] == 400
    by_n = models.Filter(must=[models.FieldCondition(key="n", match=models.MatchValue(
        value="2"))])
    assert (await asyncio.to_thread(client.count, "notes", by_n)).count == 1
    versions = served.proxy.app[SEARCHER].rollout("notes").versions

    async def indexed() -> list[dict[str, str]]:
        return [await served.proxy.store.indexed_fields(v.target) for v in versions]

    assert [fields.get("n") for fields in await indexed()] == ["keyword", "keyword"]
    await asyncio.to_thread(client.delete_payload_index, "notes", "n")
    assert [fields.get("n") for fields in await indexed()] == [None, None]
    await asyncio.to_thread(client.delete_payload_index, "notes", "n")  # none there: no error


HEX = "c0a96bbad8b35649b6ea53fd654a23c9"  # as Haystack and LangChain write ids (uuid.hex)
CANONICAL = str(uuid.UUID(HEX))
SPELLINGS = (HEX, HEX.upper(), CANONICAL, CANONICAL.upper(), "{" + CANONICAL + "}",
             "urn:uuid:" + CANONICAL)


async def test_every_uuid_spelling_names_one_point_answered_in_its_canonical_form(
        served: Served) -> None:
    client = await asyncio.to_thread(_client, served)
    rollout = served.proxy.app[SEARCHER].rollout("notes")
    store = served.proxy.store.inner
    await asyncio.to_thread(client.create_collection, "own", models.VectorParams(
        size=4, distance=models.Distance.COSINE))
    await asyncio.to_thread(client.upsert, "notes", [models.PointStruct(
        id=HEX, vector=_document("a lighthouse on a stormy coast"), payload={"n": "hex"})])
    await asyncio.to_thread(client.upsert, "own", [models.PointStruct(
        id=HEX, vector=[0.1, 0.2, 0.3, 0.4], payload={"n": "hex"})])
    for collection in ("notes", "own"):
        for spelling in SPELLINGS:  # each spelling names the one point, answered canonical
            got = await asyncio.to_thread(client.retrieve, collection, [spelling])
            assert [(str(r.id), r.payload) for r in got] == [(CANONICAL, {"n": "hex"})]
        # written again under another spelling: the same point, replaced, not a second one
        again = _document("a lighthouse") if collection == "notes" else [0.4, 0.3, 0.2, 0.1]
        await asyncio.to_thread(client.upsert, collection, [models.PointStruct(
            id="{" + CANONICAL.upper() + "}", vector=again, payload={"n": "again"})])
        assert (await asyncio.to_thread(client.count, collection)).count == 1
        query = _document("lighthouse") if collection == "notes" else [0.4, 0.3, 0.2, 0.1]
        hits = await asyncio.to_thread(partial(
            client.query_points, collection, query=query, limit=500))  # a reranker's depth
        assert [(str(h.id), (h.payload or {}).get("n")) for h in hits.points] == [
            (CANONICAL, "again")]
        page, _ = await asyncio.to_thread(partial(
            client.scroll, collection, offset=HEX.upper(), limit=5))
        assert [str(p.id) for p in page] == [CANONICAL]
        await asyncio.to_thread(client.delete, collection, models.PointIdsList(
            points=["urn:uuid:" + CANONICAL]))
        assert (await asyncio.to_thread(client.count, collection)).count == 0
    for version in rollout.versions:  # gone from every version of the alias
        assert await store.count(version.target) == 0
