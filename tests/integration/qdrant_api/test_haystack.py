"""Haystack's Qdrant store writes, checks, finds and deletes its documents through embedshift.

Haystack keeps each document under a UUID in its 32-hex-digit form (`uuid5(...).hex`) and checks
for duplicates by retrieving those ids before it writes. Its store is pointed at the Qdrant port
unchanged: first at a collection of its own, which is then adopted as an alias's v1, then at the
alias, where its retriever's vectors come from the proxy's embeddings and are routed.
"""

from __future__ import annotations

import asyncio
import warnings
from pathlib import Path
from typing import Any

import pytest

from proxy.models.builtin import L3_ID
from proxy.vectors.edge import EdgeStore
from proxy.web.keys import WATCHER
from rollout_rules.model import Target
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


def _store(where: dict[str, Any], index: str) -> Any:
    from haystack.utils import Secret
    from haystack_integrations.document_stores.qdrant import QdrantDocumentStore

    with warnings.catch_warnings():  # "api key over an insecure connection": loopback here
        warnings.filterwarnings("ignore", message="Api key is used with an insecure")
        store = QdrantDocumentStore(**where, api_key=Secret.from_token(WRITE_KEY), https=False,
                                    index=index, embedding_dim=384, similarity="cosine",
                                    progress_bar=False)
        store.count_documents()  # the collection is set up (or checked) on first use
        version_checked()
    return store


@pytest.mark.parametrize("wire", WIRES)
async def test_haystacks_hex_ids_write_check_duplicates_find_and_delete_then_migrate(
        proxies: ProxyFactory, tmp_path: Path, wire: str) -> None:
    from haystack import Document
    from haystack.document_stores.errors import DuplicateDocumentError
    from haystack.document_stores.types import DuplicatePolicy
    from haystack_integrations.components.retrievers.qdrant import QdrantEmbeddingRetriever

    proxy = await proxies.start(engine=EdgeStore(tmp_path / "qdrant"), refresh_interval_s=0.2,
                                qdrant_write_key=WRITE_KEY, data_dir=str(tmp_path / "data"))
    server, url = await qdrant_api(proxy)
    edge = await qdrant_grpc(proxy) if wire == "grpc" else None
    where = wire_args(url, edge.port if edge is not None else None)
    texts = [f"{topic}, note {n}" for n, topic in enumerate(TOPICS * 4)]
    l3 = proxies.engine.models[(L3_ID, "none")]  # the application's own encoder
    vectors = await asyncio.to_thread(l3.embed, texts)
    documents = [Document(id=f"doc-{n}", content=text, meta={"n": n},
                          embedding=[float(x) for x in vector])
                 for n, (text, vector) in enumerate(zip(texts, vectors, strict=True))]

    def own_collection() -> tuple[int, int, list[str]]:
        store = _store(where, "hs")
        written = store.write_documents(documents)  # checks the hex ids first, then writes
        with pytest.raises(DuplicateDocumentError):
            store.write_documents(documents[:2])
        skipped = store.write_documents(documents[:2], policy=DuplicatePolicy.SKIP)
        found = QdrantEmbeddingRetriever(store, top_k=3).run(
            query_embedding=documents[2].embedding or [])["documents"]
        return written, skipped, [d.id for d in found]

    written, skipped, found = await asyncio.to_thread(own_collection)
    assert (written, skipped) == (len(texts), 0)
    assert found[0] == "doc-2"  # Haystack's own ids, rebuilt from its payload
    assert await proxy.store.inner.count(Target(collection="hs")) == len(texts)

    response = await proxy.client.post(
        "/admin/aliases/notes/adopt", json={"collection": "hs", "model": L3_ID},
        headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
    adopted = await response.json()
    assert response.status == 200 and adopted["text_field"] == "content", adopted
    assert "notes" in proxy.app[WATCHER].rollouts

    def through_the_alias() -> tuple[list[str], list[str], int]:
        store = _store(where, "notes")
        query = _embedding(proxy, "a lighthouse on a stormy coast")
        first = [d.id for d in QdrantEmbeddingRetriever(store, top_k=2).run(
            query_embedding=query)["documents"]]
        got = [d.id for d in store.filter_documents({"field": "meta.n", "operator": "<",
                                                     "value": 3})]
        store.delete_documents(["doc-2", "doc-10"])
        return first, got, store.count_documents()

    first, got, left = await asyncio.to_thread(through_the_alias)
    assert first[0] in ("doc-2", "doc-10", "doc-18", "doc-26") and len(first) == 2
    assert sorted(got) == ["doc-0", "doc-1", "doc-2"]
    assert left == len(texts) - 2
    if edge is not None:
        await edge.stop(0)
    await server.close()


def _embedding(proxy: Proxy, text: str) -> list[float]:
    from openai import OpenAI

    with OpenAI(base_url=f"http://127.0.0.1:{proxy.client.port}/v1",
                api_key="unused") as client:  # closed: no connection left to the collector
        return list(client.embeddings.create(model="notes", input=text,
                                             encoding_format="float").data[0].embedding)
