"""Hybrid applications (a dense and a sparse vector, fused) run unchanged through the Qdrant port.

LangChain (`HYBRID` and `SPARSE`), LlamaIndex (`enable_hybrid=True`) and Haystack
(`use_sparse_embeddings=True`) each create a collection of their own through embedshift, write
a corpus with their own ids, dense vectors from the L3 model and sparse vectors from a small
local encoder written here, and query it as they do. Each answer equals the answer the same
framework gets from qdrant-client's local mode holding the same corpus: the engine fused it.
Each test runs over REST and over gRPC (the frameworks' ``prefer_grpc=True``).
"""

from __future__ import annotations

import asyncio
import re
import warnings
import zlib
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from msgspec.structs import replace
from qdrant_client import QdrantClient, models

from proxy.ingest.documents import doc_id_of, point_id
from proxy.models.builtin import L3_ID, L6_ID
from proxy.vectors.base import (
    Fusion,
    Nearest,
    PointIn,
    Sparse,
    Stage,
    carried_of,
    scroll_all,
)
from proxy.vectors.edge import EdgeStore
from proxy.web.keys import INGESTOR, WATCHER
from rollout_rules.model import Carried, Target, Version
from tests.eventually import eventually, eventually_async
from tests.integration.conftest import ADMIN_TOKEN, Proxy, ProxyFactory
from tests.integration.qdrant_api.clients import (
    TOPICS,
    WIRES,
    WRITE_KEY,
    qdrant_api,
    qdrant_grpc,
    version_checked,
    wire_args,
)

pytestmark = pytest.mark.integration
FILLER = ["seen", "from", "afar", "in", "old", "photographs", "kept", "by", "a", "family", "of",
          "sailors", "who", "wrote", "down", "every", "passing", "season", "with", "care"]
TEXTS = [" ".join([topic, *FILLER[:n]]) for n, topic in enumerate(TOPICS * 3)]
"""Each text of its own length: no two hold a query word with the same weight, so no two tie
in a prefetch (engines order equal scores as they please, and a fusion reads the order)."""
QUERY = "a stormy night at the harbour"


STOPWORDS = frozenset(["a", "an", "at", "by", "down", "from", "in", "of", "on", "the", "who",
                       "with"])


def sparse(text: str) -> tuple[list[int], list[float]]:
    """A word-hash sparse vector with BM25's saturation and length norm, and a weight per word
    (as IDF gives), stop words left out: what an application's BM25 would send, computed here
    so nothing is downloaded."""
    words = Counter(w for w in re.findall(r"[a-z0-9]+", text.lower()) if w not in STOPWORDS)
    total = sum(words.values())
    by_index = {(crc := zlib.crc32(word.encode())) % (1 << 20):  # a weight of its own a word
                (1 + crc % 997 / 997) * count * 2.2 / (count + 1.2 * (0.25 + 0.75 * total / 8))
                for word, count in words.items()}
    indices = sorted(by_index)
    return indices, [by_index[i] for i in indices]


class Served:
    def __init__(self, proxy: Proxy, url: str, dense: Any, grpc_port: int | None) -> None:
        self.proxy, self.url, self.dense, self.grpc_port = proxy, url, dense, grpc_port

    def where(self, **key: Any) -> dict[str, Any]:
        """A framework's connection arguments: the Qdrant port (gRPC's too, on that wire)."""
        return {**wire_args(self.url, self.grpc_port), "api_key": WRITE_KEY, "https": False,
                **key}

    def client(self) -> QdrantClient:
        with warnings.catch_warnings():  # "api key over an insecure connection": loopback
            warnings.filterwarnings("ignore", message="Api key is used with an insecure")
            client = QdrantClient(**self.where())
            version_checked()
        return client

    def embed(self, texts: list[str]) -> list[list[float]]:
        return [[float(x) for x in v] for v in self.dense.embed(texts)]


@pytest.fixture(params=WIRES)
async def served(proxies: ProxyFactory, tmp_path: Path, request: pytest.FixtureRequest) -> Any:
    proxy = await proxies.start(engine=EdgeStore(tmp_path / "qdrant"),
                                qdrant_write_key=WRITE_KEY, data_dir=str(tmp_path / "data"))
    server, url = await qdrant_api(proxy)
    edge = await qdrant_grpc(proxy) if request.param == "grpc" else None
    yield Served(proxy, url, proxies.engine.models[(L3_ID, "none")],
                 edge.port if edge is not None else None)
    if edge is not None:
        await edge.stop(0)
    await server.close()


def _answer(found: list[tuple[str, float]]) -> list[tuple[float, str]]:
    """An answer as (score, text), ordered so engines' orders of equal scores agree."""
    return sorted(((round(score, 4), text) for text, score in found), reverse=True)


def _langchain_encoders(served: Served) -> tuple[Any, Any]:
    """LangChain's dense embeddings by the L3 model in-process, and its sparse ones by
    ``sparse``."""
    from langchain_core.embeddings import Embeddings
    from langchain_qdrant import SparseEmbeddings, SparseVector

    class Dense(Embeddings):
        def embed_documents(self, texts: list[str]) -> list[list[float]]:
            return served.embed(texts)

        def embed_query(self, text: str) -> list[float]:
            return served.embed([text])[0]

    class WordHash(SparseEmbeddings):
        def embed_documents(self, texts: list[str]) -> list[SparseVector]:
            return [self.embed_query(text) for text in texts]

        def embed_query(self, text: str) -> SparseVector:
            indices, values = sparse(text)
            return SparseVector(indices=indices, values=values)

    return Dense(), WordHash()


async def test_langchain_hybrid_and_sparse_answer_as_the_engine_does(served: Served) -> None:
    from langchain_qdrant import QdrantVectorStore, RetrievalMode

    dense, word_hash = _langchain_encoders(served)

    def run(mode: RetrievalMode, **where: Any) -> list[tuple[float, str]]:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Api key is used with an insecure")
            store = QdrantVectorStore.from_texts(
                TEXTS, dense, sparse_embedding=word_hash, retrieval_mode=mode,
                collection_name=f"lc_{mode.value}", metadatas=[{"n": n} for n in range(
                    len(TEXTS))], **where)
            version_checked()
        found = store.similarity_search_with_score(QUERY, k=len(TEXTS))
        return _answer([(doc.page_content, score) for doc, score in found])

    for mode in (RetrievalMode.HYBRID, RetrievalMode.SPARSE):
        ours = await asyncio.to_thread(run, mode, **served.where())
        engines = await asyncio.to_thread(run, mode, location=":memory:")
        assert ours == engines and len(ours) >= 8, mode
    client = await asyncio.to_thread(served.client)
    info = await asyncio.to_thread(client.get_collection, "lc_hybrid")
    vectors = info.config.params.vectors
    assert isinstance(vectors, dict) and set(vectors) == {""}  # a map keyed "", as it was made
    assert set(info.config.params.sparse_vectors or {}) == {"langchain-sparse"}


async def test_llamaindex_hybrid_answers_as_the_engine_does(served: Served) -> None:
    from llama_index.core.schema import TextNode
    from llama_index.core.vector_stores.types import VectorStoreQuery, VectorStoreQueryMode
    from llama_index.vector_stores.qdrant import QdrantVectorStore

    def encode(texts: list[str]) -> tuple[list[list[int]], list[list[float]]]:
        pairs = [sparse(text) for text in texts]
        return [i for i, _ in pairs], [v for _, v in pairs]

    vectors = await asyncio.to_thread(served.embed, [*TEXTS, QUERY])

    def run(client: QdrantClient) -> list[tuple[float, str]]:
        store = QdrantVectorStore(collection_name="li_hybrid", client=client,
                                  enable_hybrid=True, sparse_doc_fn=encode,
                                  sparse_query_fn=encode)
        store.add([TextNode(id_=f"00000000-0000-4000-8000-{n:012d}", text=text,
                            embedding=vector, metadata={"n": n})
                   for n, (text, vector) in enumerate(zip(TEXTS, vectors[:-1], strict=True))])
        found = store.query(VectorStoreQuery(
            query_embedding=vectors[-1], query_str=QUERY, similarity_top_k=8, sparse_top_k=8,
            hybrid_top_k=8, mode=VectorStoreQueryMode.HYBRID))
        return _answer([(node.get_content(), score) for node, score in zip(
            found.nodes or [], found.similarities or [], strict=True)])

    def local() -> list[tuple[float, str]]:
        with warnings.catch_warnings():  # its payload index "has no effect in the local Qdrant"
            warnings.filterwarnings("ignore", message="Payload indexes have no effect")
            return run(QdrantClient(location=":memory:"))

    ours = await asyncio.to_thread(lambda: run(served.client()))
    engines = await asyncio.to_thread(local)
    assert ours == engines and len(ours) == 8

    # adopted by text-dense and migrated to L6: its batch of a dense and a sparse search
    # through the alias is answered as the engine answers it from v2's points
    adopted = await _admin(served.proxy, "POST", "/admin/aliases/notes/adopt",
                           {"collection": "li_hybrid", "model": L3_ID, "vector": "text-dense"})
    assert adopted["carried"] == ["'text-sparse-new' (sparse)"]
    v2 = await _backfilled_l6(served.proxy)
    await _admin(served.proxy, "POST", "/admin/aliases/notes/percent",
                 {"percent": 100, "reason": "all"})
    routed = await asyncio.to_thread(_handed_out, served.proxy, QUERY)
    copy = QdrantClient(location=":memory:")  # v2's points, as the application would hold them
    copy.create_collection("notes", vectors_config={"text-dense": models.VectorParams(
        size=384, distance=models.Distance.COSINE)}, sparse_vectors_config={
        "text-sparse-new": models.SparseVectorParams()})
    copy.upsert("notes", [models.PointStruct(
        id=doc_id_of(p), vector={"text-dense": p.vector or [], "text-sparse-new": (
            (p.named or {})["text-sparse-new"])},
        payload={k: v for k, v in p.payload.items() if k != "_embedshift"})
        async for p in scroll_all(served.proxy.store.inner, v2.target, vectors=True)])

    def query(client: QdrantClient) -> list[tuple[float, str]]:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Payload indexes have no effect")
            store = QdrantVectorStore(collection_name="notes", client=client,
                                      enable_hybrid=True, sparse_doc_fn=encode,
                                      sparse_query_fn=encode)
            found = store.query(VectorStoreQuery(
                query_embedding=routed, query_str=QUERY, similarity_top_k=8, sparse_top_k=8,
                hybrid_top_k=8, mode=VectorStoreQueryMode.HYBRID))
        return _answer([(node.get_content(), score) for node, score in zip(
            found.nodes or [], found.similarities or [], strict=True)])

    through = await asyncio.to_thread(lambda: query(served.client()))
    assert through == await asyncio.to_thread(query, copy) and len(through) == 8


async def test_haystack_hybrid_answers_as_the_engine_does(served: Served) -> None:
    from haystack import Document
    from haystack.dataclasses import SparseEmbedding
    from haystack.utils import Secret
    from haystack_integrations.components.retrievers.qdrant import QdrantHybridRetriever
    from haystack_integrations.document_stores.qdrant import QdrantDocumentStore

    vectors = await asyncio.to_thread(served.embed, [*TEXTS, QUERY])
    documents = [Document(id=f"doc-{n}", content=text, meta={"n": n}, embedding=vector,
                          sparse_embedding=SparseEmbedding(*sparse(text)))
                 for n, (text, vector) in enumerate(zip(TEXTS, vectors[:-1], strict=True))]

    def run(**where: Any) -> list[tuple[float, str]]:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Api key is used with an insecure")
            store = QdrantDocumentStore(index="hs_hybrid", embedding_dim=384,
                                        use_sparse_embeddings=True, progress_bar=False,
                                        **where)
            store.write_documents(documents)  # the duplicate check first, by 32-hex ids
            version_checked()
        retriever = QdrantHybridRetriever(store, top_k=20)
        answers = []
        for weights in (None, [1.0, 2.0]):
            found = retriever.run(query_embedding=vectors[-1],
                                  query_sparse_embedding=SparseEmbedding(*sparse(QUERY)),
                                  rrf_k=None if weights is None else 60, rrf_weights=weights)
            answers.extend(_answer([(d.content or "", d.score or 0.0)
                                    for d in found["documents"]]))
        return answers

    ours = await asyncio.to_thread(run, **served.where(api_key=Secret.from_token(WRITE_KEY)))
    engines = await asyncio.to_thread(run, location=":memory:")
    assert ours == engines and len(ours) >= 20

    # adopted as an alias's v1 by its dense vector: the sparse one is carried
    response = await served.proxy.client.post(
        "/admin/aliases/notes/adopt", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
        json={"collection": "hs_hybrid", "model": L3_ID, "vector": "text-dense"})
    adopted = await response.json()
    assert response.status == 200 and adopted["median_cosine"] > 0.999, adopted
    assert adopted["carried"] == ["'text-sparse' (sparse)"]

    # migrated to L6 in a collection of its own (its vector unnamed there): Haystack's hybrid
    # search through the alias, by its own name text-dense, is the engine's fusion on v2
    v2 = await _backfilled_l6(served.proxy)
    await _admin(served.proxy, "POST", "/admin/aliases/notes/percent",
                 {"percent": 100, "reason": "all"})
    routed = await asyncio.to_thread(_handed_out, served.proxy, QUERY)

    def through_the_alias() -> list[tuple[float, str]]:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Api key is used with an insecure")
            store = QdrantDocumentStore(index="notes", embedding_dim=384,
                                        **served.where(api_key=Secret.from_token(WRITE_KEY)),
                                        use_sparse_embeddings=True, progress_bar=False)
            found = QdrantHybridRetriever(store, top_k=20).run(
                query_embedding=routed, query_sparse_embedding=SparseEmbedding(*sparse(QUERY)))
            version_checked()
        stored = store.filter_documents()  # read back with its vectors, by Haystack's names
        assert len(stored) == len(TEXTS) and all(
            len(d.embedding or []) == 384 and d.sparse_embedding is not None for d in stored)
        return _answer([(d.content or "", d.score or 0.0) for d in found["documents"]])

    through = await asyncio.to_thread(through_the_alias)
    fused = await served.proxy.store.inner.query(v2.target, Stage(Fusion("rrf"), 20, (
        Stage(Nearest("text-sparse", Sparse(*sparse(QUERY))), 10),
        Stage(Nearest("", await _l6(served, v2, QUERY)), 10))), True)
    assert through == _answer([(h.payload["content"], h.score) for h in fused
                               if h.payload is not None]) and len(through) >= 10


def _handed_out(proxy: Proxy, text: str) -> list[float]:
    """``text``'s vector from the proxy's embeddings (so it is searched where it was made)."""
    from openai import OpenAI

    with OpenAI(base_url=f"http://127.0.0.1:{proxy.client.port}/v1",
                api_key="unused") as client:  # closed: no connection left to the collector
        return list(client.embeddings.create(model="notes", input=text,
                                             encoding_format="float").data[0].embedding)


async def _backfilled_l6(proxy: Proxy) -> Version:
    """An L6 v2 in a collection of its own, declared the candidate of ``notes`` and
    backfilled."""
    rollout = proxy.app[WATCHER].rollouts["notes"]
    v2 = Version(name="v2", model=L6_ID, dimensions=384, target=Target(collection="notes_v2"))
    await proxy.rules.write(replace(rollout, versions=(*rollout.versions, v2), candidate="v2"),
                            rollout.revision, "tests", "add the candidate")
    await eventually(lambda: proxy.app[WATCHER].rollouts["notes"].candidate == "v2")
    await _admin(proxy, "POST", "/admin/aliases/notes/backfill", {"batch_size": 8})

    async def done() -> bool:
        progress = await _admin(proxy, "GET", "/admin/aliases/notes/backfill")
        assert progress["state"] != "failed", progress
        return bool(progress["state"] == "done")

    await eventually_async(done, timeout_s=120)
    return v2


async def _l6(served: Served, v2: Version, text: str) -> list[float]:
    model = await served.proxy.app[INGESTOR].models.get(v2)
    return [float(x) for x in (await asyncio.to_thread(model.embed, [text]))[0]]


async def _admin(proxy: Proxy, method: str, path: str, body: Any = None) -> Any:
    response = await proxy.client.request(method, path, json=body,
                                          headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
    answer = await response.json()
    assert response.status == 200, (path, answer)
    return answer


async def _fused_by_user(served: Served, users: int) -> dict[str, tuple[str, str]]:
    """Per user: the version its query's dense vector came from (``/v1/embeddings``, routed by
    its affinity key), and the version that answered its fused query through the alias."""
    seen = {}
    indices, values = sparse(QUERY)
    async with aiohttp.ClientSession() as session:
        for n in range(users):
            user = {"x-qdrant-route-affinity": f"user-{n}"}
            async with session.post(
                    f"http://127.0.0.1:{served.proxy.client.port}/v1/embeddings",
                    json={"model": "notes", "input": QUERY}, headers=user) as embedded:
                made_by = embedded.headers["X-Embedshift-Model-Version"]
                dense = (await embedded.json())["data"][0]["embedding"]
            async with session.post(f"{served.url}/collections/notes/points/query", headers={
                    **user, "api-key": WRITE_KEY}, json={
                    "prefetch": [{"query": dense, "using": "", "limit": 10},
                                 {"query": {"indices": indices, "values": values},
                                  "using": "langchain-sparse", "limit": 10}],
                    "query": {"fusion": "rrf"}, "limit": 5}) as answered:
                assert answered.status == 200, await answered.text()
                seen[f"user-{n}"] = (made_by, answered.headers["X-Embedshift-Model-Version"])
    return seen


async def test_a_hybrid_collection_is_adopted_migrated_and_answered_by_one_version(
        served: Served) -> None:
    """LangChain's hybrid collection becomes an alias's v1 with its sparse vector carried; an
    L6 v2 is backfilled with v1's sparse vectors; at 50% each user's fused answer comes from
    the version that made its dense vector; at 100% LangChain's own hybrid search through the
    alias equals the engine's fused answer computed on v2's collection."""
    from langchain_openai import OpenAIEmbeddings
    from langchain_qdrant import QdrantVectorStore, RetrievalMode
    from pydantic import SecretStr

    dense, word_hash = _langchain_encoders(served)

    def write() -> None:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Api key is used with an insecure")
            QdrantVectorStore.from_texts(
                TEXTS, dense, sparse_embedding=word_hash, retrieval_mode=RetrievalMode.HYBRID,
                collection_name="lc", **served.where())
            version_checked()

    await asyncio.to_thread(write)
    proxy = served.proxy
    adopted = await _admin(proxy, "POST", "/admin/aliases/notes/adopt",
                           {"collection": "lc", "model": L3_ID})
    assert adopted["carried"] == ["'langchain-sparse' (sparse)"]
    v2 = await _backfilled_l6(proxy)
    store = proxy.store.inner
    [original], _ = await store.scroll(Target(collection="lc"), None, 1, vectors=True)
    [copied] = await store.retrieve(v2.target, [point_id(original.id, v2)], vectors=True)
    assert copied.named is not None and original.named is not None
    assert copied.named["langchain-sparse"] == original.named["langchain-sparse"]
    report = await _admin(proxy, "POST", "/admin/aliases/notes/verify")
    assert report["passed"] and report["carried_mismatch_ids"] == [], report
    altered = PointIn(copied.id, copied.vector or [], copied.payload,
                      {"langchain-sparse": Sparse([7], [0.5])})
    await store.upsert(v2.target, [altered])  # a sparse vector that is not v1's
    report = await _admin(proxy, "POST", "/admin/aliases/notes/verify")
    assert not report["passed"] and report["carried_mismatch_ids"] == [original.id], report
    await store.upsert(v2.target, [replace(altered, named=carried_of(
        original, {"langchain-sparse": Carried()}))])

    await _admin(proxy, "POST", "/admin/aliases/notes/percent", {"percent": 50, "reason": "half"})
    seen = await _fused_by_user(served, 12)
    assert all(made == answered for made, answered in seen.values()), seen
    assert {made for made, _ in seen.values()} == {"v1", "v2"}  # both halves answered

    await _admin(proxy, "POST", "/admin/aliases/notes/percent", {"percent": 100, "reason": "all"})

    def langchain() -> list[tuple[float, str]]:
        embeddings = OpenAIEmbeddings(
            model="notes", base_url=f"http://127.0.0.1:{proxy.client.port}/v1",
            api_key=SecretStr("unused"), check_embedding_ctx_length=False)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Api key is used with an insecure")
            store = QdrantVectorStore.from_existing_collection(
                "notes", embeddings, sparse_embedding=word_hash,
                retrieval_mode=RetrievalMode.HYBRID, **served.where())
            version_checked()
        return _answer([(doc.page_content, score) for doc, score in
                        store.similarity_search_with_score(QUERY, k=len(TEXTS))])

    ours = await asyncio.to_thread(langchain)
    query = await _l6(served, v2, QUERY)
    size = len(TEXTS)
    engines = await store.query(v2.target, Stage(Fusion("rrf"), size, (
        Stage(Nearest("", query), size),
        Stage(Nearest("langchain-sparse", Sparse(*sparse(QUERY))), size))), True)
    assert ours == _answer([(h.payload["page_content"], h.score) for h in engines
                            if h.payload is not None])
    assert len(ours) == len(TEXTS)

    await _text_fused_as(served, engines, size)


async def _text_fused_as(served: Served, engines: list[Any], size: int) -> None:
    """The native API's text, and the Qdrant API's Document in a prefetch, encoded by the
    routed version (v2 for all) and fused with the caller's sparse search, are the engine's
    fusion; an uncarried name is a 400 naming it."""
    proxy = served.proxy
    indices, values = sparse(QUERY)
    body = {"query": QUERY, "user_id": "someone", "limit": size, "fusion": "rrf", "prefetch": [
        {"using": "langchain-sparse", "vector": {"indices": indices, "values": values},
         "limit": size}]}
    answered = await proxy.client.post("/v1/aliases/notes/search", json=body)
    native = await answered.json()
    assert answered.status == 200 and native["model_version"] == "v2", native
    expected = sorted((round(h.score, 4), str(h.id)) for h in engines)
    assert sorted((round(h["score"], 4), str(h["id"])) for h in native["hits"]) == expected
    document = {  # the text as a Document in a prefetch, as cloud-inference clients send it
        "prefetch": [{"query": {"text": QUERY, "model": "any"}, "using": "", "limit": size},
                     {"query": {"indices": indices, "values": values},
                      "using": "langchain-sparse", "limit": size}],
        "query": {"fusion": "rrf"}, "limit": size}
    headers = {"x-qdrant-route-affinity": "someone", "api-key": WRITE_KEY}
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{served.url}/collections/notes/points/query",
                                json=document, headers=headers) as fused:
            points = (await fused.json())["result"]["points"]
            assert fused.headers["X-Embedshift-Model-Version"] == "v2"
        async with session.post(f"{served.url}/collections/notes/points/query/groups",
                                json={**document, "group_by": "page_content", "limit": 3,
                                      "group_size": 1}, headers=headers) as grouped:
            groups = (await grouped.json())["result"]["groups"]
    assert sorted((round(p["score"], 4), str(p["id"])) for p in points) == expected
    best = sorted(points, key=lambda p: -p["score"])[:3]  # each text its own group
    assert [g["hits"][0]["score"] for g in groups] == [p["score"] for p in best]
    refused = await proxy.client.post("/v1/aliases/notes/search", json={
        **body, "prefetch": [{"using": "bm42", "vector": [0.5]}]})
    assert refused.status == 400 and (await refused.json())["error"]["field"] == "using"
