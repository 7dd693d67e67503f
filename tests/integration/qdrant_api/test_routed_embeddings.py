"""Applications that embed their text themselves are routed: a vector is searched where it was made.

The vector a user is handed by `/v1/embeddings` is searched in that version's collection, on
any proxy, after the rule moves. The real openai client asks for the vectors (base64, its
default); LangChain's `OpenAIEmbeddings` and `QdrantVectorStore`, and LlamaIndex's Qdrant store,
run unchanged against the proxy's two URLs.
"""

from __future__ import annotations

import asyncio
import warnings
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from langchain_openai import OpenAIEmbeddings
from langchain_qdrant import QdrantVectorStore
from msgspec.structs import replace
from openai import OpenAI
from pydantic import SecretStr
from qdrant_client import models

from proxy.config import Settings
from proxy.state.client import connect
from proxy.state.rulestore import RedisRuleStore
from proxy.web.keys import SEARCHER, WATCHER
from tests.eventually import eventually
from tests.integration.conftest import Proxy, ProxyFactory
from tests.integration.qdrant_api.clients import (
    WIRES,
    notes_proxy,
    qdrant_api,
    qdrant_grpc,
    version_checked,
    wire_args,
)

pytestmark = pytest.mark.integration
WRITE_KEY = "qdrant-write-key-for-tests"


def _embed(proxy: Proxy, **body: Any) -> Any:
    """The proxy's embeddings for ``body``, asked by the openai client (closed after: its
    connections are not left to the garbage collector)."""
    with OpenAI(base_url=f"http://127.0.0.1:{proxy.client.port}/v1", api_key="unused") as client:
        return client.embeddings.create(**body)


def _users_on(proxy: Proxy, version: str, count: int = 3) -> list[str]:
    searcher = proxy.app[SEARCHER]
    return [user for user in (f"user-{n}" for n in range(200))
            if searcher.route("products", user, "k").name == version][:count]


async def _query(url: str, vector: list[float], user: str) -> tuple[str, list[Any]]:
    async with aiohttp.ClientSession() as session, session.post(
            f"{url}/collections/products/points/query",
            headers={"x-qdrant-route-affinity": user},
            json={"query": vector, "limit": 3, "with_payload": False}) as response:
        assert response.status == 200, await response.text()
        return (response.headers["X-Embedshift-Model-Version"],
                [p["id"] for p in (await response.json())["result"]["points"]])


async def test_a_vector_handed_out_is_searched_where_it_was_made_anywhere_and_later(
        proxies: ProxyFactory) -> None:
    declared = await proxies.declare(percent=50)
    first = await proxies.start(refresh_interval_s=0.1)
    second = await proxies.start(refresh_interval_s=0.1)
    [user] = _users_on(first, "v2", 1)
    answer = await asyncio.to_thread(
        _embed, first, model="products", user=user,
        input=["warm jacket for winter", "tent for two"])  # base64, the client's default
    assert answer.model == "sentence-transformers/all-MiniLM-L6-v2"
    assert [len(d.embedding) for d in answer.data] == [384, 384]
    native = await first.search(query="warm jacket for winter", user_id=user, limit=3)
    assert native["model_version"] == "v2"

    rules = RedisRuleStore(connect(Settings(), proxies.redis_url), proxies.prefix)
    rolled = await rules.write(replace(declared, percent=0), declared.revision, "tests",
                               "rollback")  # the user is on v1 from now on
    await rules.aclose()
    await eventually(lambda: second.app[WATCHER].rollouts["products"].revision ==
                     rolled.revision)
    server, url = await qdrant_api(second)  # another proxy, after the rule moved
    version, ids = await _query(url, list(answer.data[0].embedding), user)
    assert version == "v2" and ids == [h["id"] for h in native["hits"]]

    unknown = [x * 0.5 for x in answer.data[0].embedding]  # a vector nobody handed out
    assert (await _query(url, unknown, user))[0] == "v1"
    await server.close()


@pytest.mark.parametrize("wire", WIRES)
async def test_langchain_embeds_writes_and_searches_through_the_proxy_alone(
        proxies: ProxyFactory, tmp_path: Path, wire: str) -> None:
    proxy = await notes_proxy(proxies, tmp_path, qdrant_write_key=WRITE_KEY)
    server, url = await qdrant_api(proxy)
    edge = await qdrant_grpc(proxy) if wire == "grpc" else None
    where = wire_args(url, edge.port if edge is not None else None)
    texts = ["a glacier lake frozen in winter", "a harbour crane unloading ships",
             "a lighthouse on a stormy coast", "a desert road at noon"]

    def langchain() -> list[Any]:
        with warnings.catch_warnings():  # "api key over an insecure connection": loopback
            warnings.filterwarnings("ignore", message="Api key is used with an insecure")
            return _langchain()

    def _langchain() -> list[Any]:
        embeddings = OpenAIEmbeddings(
            model="notes", base_url=f"http://127.0.0.1:{proxy.client.port}/v1",
            api_key=SecretStr("unused"), check_embedding_ctx_length=False)  # no tokenizer download
        store = QdrantVectorStore.from_texts(
            texts, embeddings, **where, api_key=WRITE_KEY, https=False,
            collection_name="notes", force_recreate=False,
            metadatas=[{"kind": "cold" if n == 0 else "warm"} for n in range(len(texts))])
        version_checked()
        found = store.similarity_search(
            "storm at sea", k=2, filter=models.Filter(must=[models.FieldCondition(
                key="metadata.kind", match=models.MatchValue(value="warm"))]))
        return found

    found = await asyncio.to_thread(langchain)
    assert found[0].page_content == "a lighthouse on a stormy coast"
    assert all(d.metadata["kind"] == "warm" for d in found)
    if edge is not None:
        await edge.stop(0)
    await server.close()


@pytest.mark.parametrize("wire", WIRES)
async def test_llamaindex_writes_and_queries_its_nodes_through_the_proxy(
        proxies: ProxyFactory, tmp_path: Path, wire: str) -> None:
    """LlamaIndex's Qdrant store with vectors from the proxy's embeddings: its nodes (text
    inside `_node_content`) go to stable and come back whole."""
    from llama_index.core.schema import TextNode
    from llama_index.core.vector_stores.types import VectorStoreQuery
    from llama_index.vector_stores.qdrant import QdrantVectorStore as LlamaQdrant
    from qdrant_client import QdrantClient

    proxy = await notes_proxy(proxies, tmp_path, qdrant_write_key=WRITE_KEY)
    server, url = await qdrant_api(proxy)
    edge = await qdrant_grpc(proxy) if wire == "grpc" else None
    where = wire_args(url, edge.port if edge is not None else None)
    texts = ["a glacier lake frozen in winter", "a lighthouse on a stormy coast",
             "a desert road at noon"]

    def llamaindex() -> list[str]:
        vectors = [d.embedding for d in _embed(
            proxy, model="notes", input=texts, encoding_format="float").data]
        with warnings.catch_warnings():  # "api key over an insecure connection": loopback
            warnings.filterwarnings("ignore", message="Api key is used with an insecure")
            client = QdrantClient(**where, api_key=WRITE_KEY, https=False)
            version_checked()
        store = LlamaQdrant(collection_name="notes", client=client)
        store.add([TextNode(text=text, embedding=vector, metadata={"n": n})
                   for n, (text, vector) in enumerate(zip(texts, vectors, strict=True))])
        query = _embed(proxy, model="notes", input="storm at sea")
        found = store.query(VectorStoreQuery(query_embedding=query.data[0].embedding,
                                             similarity_top_k=2))
        return [node.get_content() for node in found.nodes or []]

    found = await asyncio.to_thread(llamaindex)
    assert found[0] == "a lighthouse on a stormy coast" and len(found) == 2
    stable = proxy.app[SEARCHER].rollout("notes").version("v1")
    assert await proxy.store.inner.count(stable.target) == 3
    if edge is not None:
        await edge.stop(0)
    await server.close()


async def test_routed_embeddings_ask_for_their_key_keep_to_a_share_and_a_cap(
        proxies: ProxyFactory) -> None:
    """With ``embeddings_key`` set the openai client needs it; one address embeds at most
    ``embeddings_per_minute`` texts (a 429 saying how long to wait); past ``handed_out_max``
    the oldest fingerprints are dropped and counted, the newest still routed."""
    await proxies.declare(percent=50)
    proxy = await proxies.start(embeddings_key="embeddings-key-for-tests",
                                embeddings_per_minute=40, handed_out_max=10)
    base = f"http://127.0.0.1:{proxy.client.port}/v1"
    anonymous = OpenAI(base_url=base, api_key="wrong", max_retries=0)
    with pytest.raises(Exception, match="401"):
        await asyncio.to_thread(anonymous.embeddings.create, model="products", input=["x"])
    keyed = OpenAI(base_url=base, api_key="embeddings-key-for-tests", max_retries=0)
    texts = [f"a warm jacket, size {n}" for n in range(20)]
    first = await asyncio.to_thread(keyed.embeddings.create, model="products", input=texts,
                                    user="alice")
    assert len(first.data) == 20
    dropped = proxy.app[SEARCHER].metrics.handed_dropped.labels("products")._value.get()
    assert dropped == 10  # 20 handed out, 10 kept
    second = await asyncio.to_thread(keyed.embeddings.create, model="products",
                                     input=texts[:15], user="alice")
    assert len(second.data) == 15
    with pytest.raises(Exception, match="429"):  # 35 of 40 spent: 15 more is past the share
        await asyncio.to_thread(keyed.embeddings.create, model="products", input=texts[:15])
    anonymous.close()
    keyed.close()
