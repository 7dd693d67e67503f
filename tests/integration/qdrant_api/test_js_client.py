"""Qdrant's JavaScript clients, REST and gRPC, under node, query an alias as qdrant-client does.

The clients (`@qdrant/js-client-rest`, `@qdrant/js-client-grpc`, pinned by
`js/package-lock.json`) are installed from npm into a folder of the test's own; without node
and npm the test says so and skips.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.integration.conftest import Proxy, ProxyFactory
from tests.integration.qdrant_api.clients import WRITE_KEY, notes_proxy, qdrant_api, qdrant_grpc

pytestmark = pytest.mark.integration
HERE = Path(__file__).parent / "js"


@pytest.fixture(scope="session")
def js_client(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.skip("node and npm are not installed (Debian: nodejs npm): the JavaScript "
                    "client cannot run here")
    folder = tmp_path_factory.mktemp("js-client")
    for name in ("package.json", "package-lock.json", "query.mjs", "grpc.mjs"):
        shutil.copy(HERE / name, folder / name)
    subprocess.run(["npm", "ci", "--no-audit", "--no-fund", "--silent"], cwd=folder,
                   check=True, timeout=600)
    return folder


@pytest.fixture
async def served(proxies: ProxyFactory) -> AsyncIterator[tuple[Proxy, str]]:
    await proxies.declare(percent=50)
    proxy = await proxies.start()
    server, url = await qdrant_api(proxy)
    yield proxy, url
    await server.close()


async def test_the_javascript_client_lists_describes_and_queries(
        js_client: Path, served: tuple[Proxy, str]) -> None:
    proxy, url = served
    for user in ("alice", "bob", "carol"):
        process = await asyncio.create_subprocess_exec(
            "node", "query.mjs", url, user, cwd=js_client, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE)
        out, err = await asyncio.wait_for(process.communicate(), timeout=60)
        assert process.returncode == 0, err.decode()
        got = json.loads(out)
        native = await proxy.search(query="warm jacket for winter", user_id=user, limit=3)
        # the alias first; other tests' collections in this shared engine after it, never a
        # version's
        assert got["collections"][0] == "products" and got["size"] == 384
        assert not {"products_v1", "products_v2"} & set(got["collections"])
        assert got["ids"] == [hit["id"] for hit in native["hits"]], user
        assert got["titles"] == [hit["payload"]["title"] for hit in native["hits"]]
        assert got["warnings"] == []  # no version-compatibility warning


async def test_the_javascript_grpc_client_writes_searches_by_document_and_deletes(
        js_client: Path, proxies: ProxyFactory, tmp_path: Path) -> None:
    """`@qdrant/js-client-grpc` (gzip-compressed messages, its health check over gRPC) writes
    Documents into an alias with the write key, searches it by Document under each user's
    affinity key (the user's version, as the native API routes them), deletes a point."""
    proxy = await notes_proxy(proxies, tmp_path, qdrant_write_key=WRITE_KEY)
    edge = await qdrant_grpc(proxy)
    for user in ("alice", "bob"):
        process = await asyncio.create_subprocess_exec(
            "node", "grpc.mjs", "127.0.0.1", str(edge.port), "notes", user, WRITE_KEY,
            cwd=js_client, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        out, err = await asyncio.wait_for(process.communicate(), timeout=60)
        assert process.returncode == 0, err.decode()
        got = json.loads(out)
        response = await proxy.client.post("/v1/aliases/notes/search", json={
            "query": "warm jacket for winter", "user_id": user, "limit": 3})
        native = await response.json()
        assert got["version"].split(".")[:2] == ["1", "20"]  # the client (1.19) accepts it
        assert got["collections"][0] == "notes"
        assert got["ids"] == [hit["id"] for hit in native["hits"]], user
        assert got["ids"][0] == 1 and got["titles"][0] == "a winter jacket for the cold"
        assert got["left"] == [2]  # 3 deleted
        assert got["refused"] == {"code": 16,  # UNAUTHENTICATED: no key, no write
                                  "message": "a valid api-key with write access is required"}
        assert got["warnings"] == []
    await edge.stop(0)
