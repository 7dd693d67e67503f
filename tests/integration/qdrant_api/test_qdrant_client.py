"""qdrant-client, sync and async, REST and gRPC, points at embedshift and is routed per user.

A real proxy (the native app and the Qdrant API beside it, on the real engine and models); the
client is qdrant-client 1.20 as applications use it, with `cloud_inference=True` so a Document's
text reaches the server, and the user's sticky key in `x-qdrant-route-affinity`. Each client
test runs over REST and over gRPC (`prefer_grpc=True`), unchanged.
"""

from __future__ import annotations

import asyncio
import warnings
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import grpc
import pytest
from qdrant_client import AsyncQdrantClient, QdrantClient, models
from qdrant_client import grpc as pb
from qdrant_client.context_headers import async_headers, headers
from qdrant_client.grpc import points_service_pb2_grpc, qdrant_pb2_grpc

from proxy.web.keys import SEARCHER
from tests.integration.conftest import Proxy, ProxyFactory
from tests.integration.qdrant_api.clients import (
    WIRES,
    qdrant_api,
    qdrant_grpc,
    refusal,
    version_checked,
    wire_args,
)

pytestmark = pytest.mark.integration
READ_KEY = "qdrant-read-key-for-tests"


class Served:
    def __init__(self, proxy: Proxy, url: str, grpc_port: int | None = None) -> None:
        self.proxy, self.url, self.grpc_port = proxy, url, grpc_port


async def _serve(proxies: ProxyFactory, wire: str = "rest", **settings: Any
                 ) -> AsyncIterator[Served]:
    await proxies.declare(percent=50)
    proxy = await proxies.start(**settings)
    server, url = await qdrant_api(proxy)
    edge = await qdrant_grpc(proxy) if wire == "grpc" else None
    yield Served(proxy, url, edge.port if edge is not None else None)
    if edge is not None:
        await edge.stop(0)
    await server.close()


@pytest.fixture(params=WIRES)
async def served(proxies: ProxyFactory, request: pytest.FixtureRequest
                 ) -> AsyncIterator[Served]:
    async for served in _serve(proxies, request.param):
        yield served


@pytest.fixture
async def rest_served(proxies: ProxyFactory) -> AsyncIterator[Served]:
    """For what only REST carries: raw HTTP bodies and headers."""
    async for served in _serve(proxies):
        yield served


def _client(served: Served, **kwargs: Any) -> QdrantClient:
    """A sync client; any warning its version check gives fails the test."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        client = QdrantClient(**wire_args(served.url, served.grpc_port), cloud_inference=True,
                              **kwargs)
        version_checked()
    assert [str(w.message) for w in caught if "insecure" not in str(w.message)] == []
    return client


def _document(text: str) -> models.Document:
    return models.Document(text=text, model="sentence-transformers/all-MiniLM-L6-v2")


async def test_the_sync_client_lists_describes_and_queries_an_alias(served: Served) -> None:
    client = await asyncio.to_thread(_client, served)
    names = [c.name for c in (await asyncio.to_thread(client.get_collections)).collections]
    # the alias first; other tests' collections in this shared engine after it, never a version's
    assert names[0] == "products" and not {"products_v1", "products_v2"} & set(names)
    assert await asyncio.to_thread(client.collection_exists, "products")
    assert not await asyncio.to_thread(client.collection_exists, "nothing-here")
    aliases = (await asyncio.to_thread(client.get_aliases)).aliases
    assert [(a.alias_name, a.collection_name) for a in aliases] == [("products", "products_v1")]
    assert not await asyncio.to_thread(client.collection_exists, "products_v1")  # a version's
    rollout = served.proxy.app[SEARCHER].rollout("products")
    sizes = {v.name: v.dimensions for v in rollout.versions}

    def described(user: str) -> int:
        with headers({"x-qdrant-route-affinity": user}):
            vectors = client.get_collection("products").config.params.vectors
        assert isinstance(vectors, models.VectorParams)
        assert vectors.distance == models.Distance.COSINE
        return vectors.size

    assert await asyncio.to_thread(described, "alice") in sizes.values()

    def query(user: str, **kwargs: Any) -> list[models.ScoredPoint]:
        with headers({"x-qdrant-route-affinity": user}):
            return client.query_points("products", query=_document("warm jacket for winter"),
                                       **kwargs).points

    def query_prefetched(user: str, prefetch: models.Prefetch) -> list[models.ScoredPoint]:
        with headers({"x-qdrant-route-affinity": user}):
            return client.query_points("products", prefetch=prefetch, limit=5,
                                       query=models.FusionQuery(fusion=models.Fusion.RRF)).points

    points = await asyncio.to_thread(query, "alice", limit=5)
    native = await served.proxy.search(query="warm jacket for winter", user_id="alice", limit=5)
    assert [p.id for p in points] == [h["id"] for h in native["hits"]]
    assert [p.payload for p in points] == [h["payload"] for h in native["hits"]]
    assert all("_embedshift" not in (p.payload or {}) for p in points)

    fused = await asyncio.to_thread(  # a hybrid-search shape: one prefetch, fused alone
        query_prefetched, "alice", models.Prefetch(query=_document("warm jacket for winter"),
                                                   limit=20))
    assert [p.id for p in fused] == [p.id for p in points]
    page = await asyncio.to_thread(query, "alice", limit=2, offset=2)
    assert [p.id for p in page] == [p.id for p in points[2:4]]
    cut = await asyncio.to_thread(query, "alice", limit=5, score_threshold=points[2].score)
    assert [p.id for p in cut] == [p.id for p in points[:3]]
    with_vectors = await asyncio.to_thread(query, "alice", limit=2, with_vectors=True)
    assert all(isinstance(p.vector, list) and len(p.vector) == 384 for p in with_vectors)
    picked = await asyncio.to_thread(query, "alice", limit=2, with_payload=["title"])
    assert all(set(p.payload or {}) == {"title"} for p in picked)
    bare = await asyncio.to_thread(query, "alice", limit=2, with_payload=False)
    assert all(not p.payload for p in bare)
    filtered = await asyncio.to_thread(
        query, "alice", limit=5, query_filter=models.Filter(must=[models.FieldCondition(
            key="category", match=models.MatchValue(value="clothing"))]))
    assert filtered and all((p.payload or {})["category"] == "clothing" for p in filtered)


async def test_a_users_version_is_the_same_through_either_api(rest_served: Served) -> None:
    served = rest_served
    async with aiohttp.ClientSession() as session:
        for n in range(40):
            user = f"user-{n}"
            async with session.post(
                    f"{served.url}/collections/products/points/query",
                    headers={"x-qdrant-route-affinity": user},
                    json={"query": {"nearest": {"text": "tent", "model": "any"}},
                          "limit": 3}) as response:
                assert response.status == 200, await response.text()
                assert (await response.json())["status"] == "ok"
                through_qdrant = response.headers["X-Embedshift-Model-Version"]
            native = await served.proxy.search(query="tent", user_id=user, limit=3)
            assert through_qdrant == native["model_version"], user


async def _async_client(served: Served) -> AsyncQdrantClient:
    """The async client checks the server's version in a thread of its own: waited for, and
    any warning it gives fails the test."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        client = AsyncQdrantClient(**wire_args(served.url, served.grpc_port),
                                   cloud_inference=True)
        await asyncio.to_thread(version_checked)
    assert [str(w.message) for w in caught] == []
    return client


async def test_the_async_client_queries_in_batches_with_affinity(served: Served) -> None:
    client = await _async_client(served)
    async with async_headers({"x-qdrant-route-affinity": "bob"}):
        answers = await client.query_batch_points("products", requests=[
            models.QueryRequest(query=_document("warm jacket"), limit=3),
            models.QueryRequest(query=_document("camping stove"), limit=2,
                                with_payload=models.PayloadSelectorExclude(exclude=["text"]))])
    assert [len(answer.points) for answer in answers] == [3, 2]
    assert all("text" not in (p.payload or {}) and "title" in (p.payload or {})
               for p in answers[1].points)
    native = await served.proxy.search(query="warm jacket", user_id="bob", limit=3)
    assert [p.id for p in answers[0].points] == [h["id"] for h in native["hits"]]
    await client.close()


async def test_what_cannot_be_served_is_refused_the_way_qdrant_refuses(served: Served) -> None:
    client = await asyncio.to_thread(_client, served)

    def refused(**kwargs: Any) -> tuple[int, str]:
        try:
            client.query_points(**{"collection_name": "products", **kwargs})
        except Exception as exc:  # noqa: BLE001 -- read as either wire refuses
            return refusal(exc)
        raise AssertionError(f"{kwargs} was answered")

    status, says = await asyncio.to_thread(refused, query=[0.1] * 7)
    assert status == 400 and "has 7 numbers" in says
    status, says = await asyncio.to_thread(refused, query=_document("x"),
                                           collection_name="nothing-here")
    assert status == 404 and "nothing-here" in says
    status, says = await asyncio.to_thread(refused, query=_document("x"), using="dense")
    assert status == 400 and "using" in says
    status, says = await asyncio.to_thread(
        refused, query=_document("x"), query_filter=models.Filter(must=[models.FieldCondition(
            key="_embedshift.text", match=models.MatchText(text="jacket"))]))
    assert status == 400 and "cannot be filtered on" in says
    status, says = await asyncio.to_thread(refused, query=_document("x"),
                                           with_payload=["_embedshift"])
    assert status == 400 and "cannot be selected" in says
    status, says = await asyncio.to_thread(refused, query=7)
    assert status == 400 and "point id" in says


async def test_a_body_nested_too_deep_is_refused_before_it_is_read(rest_served: Served
                                                                    ) -> None:
    deep = b'{"query": [0.1], "filter": ' + b"[" * 1000 + b"]" * 1000 + b"}"
    async with aiohttp.ClientSession() as session, session.post(
            f"{rest_served.url}/collections/products/points/query", data=deep) as response:
        assert response.status == 400  # decoded as the native API decodes: depth first
        assert "deeper" in (await response.json())["status"]["error"]


async def test_a_raw_vector_is_searched_in_stables_space(rest_served: Served) -> None:
    """A vector says nothing of the model that made it: it is searched in stable's space, the
    one its size fits, whatever the caller's bucket; the legacy search route too."""
    served = rest_served
    rollout = served.proxy.app[SEARCHER].rollout("products")
    stable = rollout.version(rollout.stable)
    encoder = served.proxy.app[SEARCHER].encoders[
        next(k for k in served.proxy.app[SEARCHER].encoders if k[0] == stable.model)]
    vector, _ = await encoder.encode("warm jacket for winter")
    answers: dict[str, tuple[str, dict[str, Any]]] = {}
    for n in range(60):  # a user of each version
        native = await served.proxy.search(query="warm jacket for winter", limit=4,
                                           user_id=f"user-{n}")
        answers.setdefault(native["model_version"], (f"user-{n}", native))
    on_candidate, _ = answers[rollout.candidate or ""]
    _, on_stable = answers[stable.name]
    body = {"vector": list(map(float, vector)), "limit": 4, "with_payload": True}
    async with aiohttp.ClientSession() as session, session.post(
            f"{served.url}/collections/products/points/search", json=body,
            headers={"x-qdrant-route-affinity": on_candidate}) as response:
        assert response.status == 200, await response.text()
        assert response.headers["X-Embedshift-Model-Version"] == stable.name
        legacy = (await response.json())["result"]
    assert [p["id"] for p in legacy] == [h["id"] for h in on_stable["hits"]]
    assert all(p["version"] == 0 and p["payload"] for p in legacy)


@pytest.mark.parametrize("wire", WIRES)
async def test_the_read_key_is_asked_for_when_set(proxies: ProxyFactory, wire: str) -> None:
    async for served in _serve(proxies, wire, qdrant_read_key=READ_KEY):
        client = await asyncio.to_thread(_client, served)
        with pytest.raises(Exception) as refused:  # either wire's refusal
            await asyncio.to_thread(client.get_collections)
        assert refusal(refused.value)[0] == 401
        keyed = await asyncio.to_thread(_client, served, api_key=READ_KEY)
        names = await asyncio.to_thread(keyed.get_collections)
        assert names.collections[0].name == "products"


async def test_groups_and_recommendations_come_from_the_callers_version(served: Served) -> None:
    client = await asyncio.to_thread(_client, served)
    native = await served.proxy.search(query="warm jacket for winter", user_id="carol", limit=3)

    def ask() -> tuple[Any, Any]:
        with headers({"x-qdrant-route-affinity": "carol"}):
            groups = client.query_points_groups(
                "products", group_by="category", limit=3, group_size=2,
                query=_document("warm jacket for winter"))
            liked, disliked = native["hits"][0]["id"], native["hits"][1]["id"]
            similar = client.query_points("products", limit=4, query=models.RecommendQuery(
                recommend=models.RecommendInput(positive=[liked], negative=[disliked])))
        return groups, similar

    groups, similar = await asyncio.to_thread(ask)
    assert len(groups.groups) == 3 and all(1 <= len(g.hits) <= 2 for g in groups.groups)
    assert len({g.id for g in groups.groups}) == 3
    assert all((h.payload or {})["category"] == g.id for g in groups.groups for h in g.hits)
    assert groups.groups[0].hits[0].id == native["hits"][0]["id"]  # the best hit leads
    ids = [p.id for p in similar.points]
    assert len(ids) == 4 and not {native["hits"][0]["id"], native["hits"][1]["id"]} & set(ids)


def _text_query(text: str, **fields: Any) -> pb.QueryPoints:
    return pb.QueryPoints(collection_name="products", query=pb.Query(nearest=pb.VectorInput(
        document=pb.Document(text=text, model="any"))), **fields)


async def test_over_grpc_the_version_that_answered_rides_in_the_trailing_metadata(
        proxies: ProxyFactory) -> None:
    """The same user gets the same version as through the native API, named where gRPC puts
    what is not the message; a raw vector is searched in stable's space; the health check,
    and what is not served, answer as Qdrant's would."""
    async for served in _serve(proxies, "grpc"):
        rollout = served.proxy.app[SEARCHER].rollout("products")
        async with grpc.aio.insecure_channel(f"127.0.0.1:{served.grpc_port}") as channel:
            points = points_service_pb2_grpc.PointsStub(channel)  # type: ignore[no-untyped-call]
            seen = set()
            for n in range(40):
                user = f"user-{n}"
                call = points.Query(_text_query("tent", limit=3),
                                    metadata=[("x-qdrant-route-affinity", user)])
                answer = await call
                trailing = dict(await call.trailing_metadata())
                native = await served.proxy.search(query="tent", user_id=user, limit=3)
                assert trailing["x-embedshift-model-version"] == native["model_version"]
                assert [p.id.num for p in answer.result] == [h["id"] for h in native["hits"]]
                assert trailing["x-embedshift-trace-id"]
                seen.add(native["model_version"])
            assert seen == {rollout.stable, rollout.candidate}  # both versions met
            stable = rollout.version(rollout.stable)
            call = points.Search(pb.SearchPoints(collection_name="products",
                                                 vector=[0.1] * stable.dimensions, limit=2),
                                 metadata=[("x-qdrant-route-affinity", "user-1")])
            assert len((await call).result) == 2
            assert dict(await call.trailing_metadata())[
                "x-embedshift-model-version"] == stable.name
            health = await qdrant_pb2_grpc.QdrantStub(channel).HealthCheck(  # type: ignore[no-untyped-call]
                pb.HealthCheckRequest())
            assert health.version and "qdrant" in health.title
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await points.Discover(pb.DiscoverPoints(collection_name="products"))
            assert refused.value.code() == grpc.StatusCode.UNIMPLEMENTED
            assert "Discover is not served" in (refused.value.details() or "")
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await points.Query(pb.QueryPoints(collection_name="a/b"))
            assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "name" in (refused.value.details() or "")
