"""Qdrant's JavaScript REST client, under node, queries an alias as qdrant-client does.

The client (`@qdrant/js-client-rest`, pinned by `js/package-lock.json`) is installed from npm
into a folder of the test's own; without node and npm the test says so and skips.
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
from tests.integration.qdrant_api.clients import qdrant_api

pytestmark = pytest.mark.integration
HERE = Path(__file__).parent / "js"


@pytest.fixture(scope="session")
def js_client(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.skip("node and npm are not installed (Debian: nodejs npm): the JavaScript "
                    "client cannot run here")
    folder = tmp_path_factory.mktemp("js-client")
    for name in ("package.json", "package-lock.json", "query.mjs"):
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
