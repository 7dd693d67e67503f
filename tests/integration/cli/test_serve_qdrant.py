"""`embedshift serve --qdrant-port` answers qdrant-client on the demo, as the README shows."""

from __future__ import annotations

import asyncio
import warnings

import pytest
from qdrant_client import QdrantClient, models
from qdrant_client.context_headers import headers

from loadtest.bench_proxy import free_port
from tests.integration.cli.conftest import StartServing, wait_ready

pytestmark = pytest.mark.integration


async def test_an_application_on_qdrant_client_changes_only_its_url(
        start_serving: StartServing) -> None:
    port = free_port()
    serving = start_serving(EMBEDSHIFT_QDRANT_PORT=str(port))
    await wait_ready(serving, timeout_s=240)

    def search() -> tuple[list[str], list[object]]:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            client = QdrantClient(url=f"http://127.0.0.1:{port}", cloud_inference=True,
                                  check_compatibility=False)
        names = [c.name for c in client.get_collections().collections]
        with headers({"x-qdrant-route-affinity": "alice"}):
            points = client.query_points(
                "products", limit=3, query=models.Document(text="warm jacket for winter",
                                                           model="any")).points
        return names, [p.payload["title"] for p in points if p.payload]

    names, titles = await asyncio.to_thread(search)
    assert names == ["products"] and len(titles) == 3
    assert any("jacket" in str(title).lower() for title in titles), titles
    assert '"api":"qdrant"' in serving.log.read_text()
