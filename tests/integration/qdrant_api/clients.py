"""What the Qdrant API's tests share: the API served over a proxy's parts, a proxy with an
alias of its own to write into, and waiting for qdrant-client's version check."""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

import grpc
from aiohttp import web
from aiohttp.test_utils import TestServer
from msgspec.structs import replace
from qdrant_client.http.exceptions import UnexpectedResponse

from proxy.config import Settings
from proxy.models.catalog import default_rollout
from proxy.qdrant_api.app import make_qdrant_app
from proxy.qdrant_api.handlers import Parts
from proxy.qdrant_grpc.server import GrpcEdge
from proxy.state.client import connect
from proxy.state.rulestore import RedisRuleStore
from proxy.vectors.edge import EdgeStore
from proxy.web.keys import EMBEDDER, INGESTOR, READY, SEARCHER, SETTINGS, TRACER
from proxy.web.server import GuardedSite, make_runner
from tests.integration.conftest import Proxy, ProxyFactory

os.environ["HAYSTACK_TELEMETRY_ENABLED"] = "False"  # before Haystack is imported: no posthog
WRITE_KEY = "qdrant-write-key-for-tests"
TOPICS = ["a glacier lake frozen in winter", "a harbour crane unloading ships",
          "a lighthouse on a stormy coast", "a desert road at noon", "a night market stall",
          "a mountain hut above the clouds", "a canal boat in spring", "a library reading room"]
"""An application's corpus, as the framework tests write it."""


async def qdrant_api(proxy: Proxy) -> tuple[TestServer, str]:
    """Qdrant's API over ``proxy``'s parts, on a port of its own, as `serve --qdrant-port`
    builds it; the server (to close) and its URL."""
    app = make_qdrant_app(proxy.app[SETTINGS], proxy.app[SEARCHER], proxy.app[TRACER],
                          proxy.app[INGESTOR], proxy.app[EMBEDDER],
                          lifecycle=proxy.app[READY])
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    return server, f"http://127.0.0.1:{server.port}"


async def qdrant_served(proxy: Proxy) -> tuple[web.AppRunner, int]:
    """Qdrant's API over ``proxy``'s parts as `serve` runs it (its runner and guarded site, no
    handler cancelled when its client goes), on a port of its own: the runner and the port."""
    settings = replace(proxy.app[SETTINGS], port=0)
    app = make_qdrant_app(settings, proxy.app[SEARCHER], proxy.app[TRACER],
                          proxy.app[INGESTOR], proxy.app[EMBEDDER],
                          lifecycle=proxy.app[READY])
    runner = make_runner(app, settings)
    await runner.setup()
    site = GuardedSite(runner, settings)
    await site.start()
    return runner, site.port


async def notes_proxy(proxies: ProxyFactory, tmp_path: Path, **settings: Any) -> Proxy:
    """A proxy on an engine of its own with the alias ``notes`` declared (v1 L3, v2 L6) and
    nothing written yet: writes cannot disturb the session's demo collections."""
    rules = RedisRuleStore(connect(Settings(), proxies.redis_url), proxies.prefix)
    await rules.create(default_rollout("notes"), "tests", "declare")
    await rules.aclose()
    return await proxies.start(engine=EdgeStore(tmp_path / "qdrant"),
                               data_dir=str(tmp_path / "data"), **settings)


def version_checked() -> None:
    """Wait for every pending qdrant-client version check (a warning it gives is then seen)."""
    for thread in threading.enumerate():
        if thread.name.endswith("(_check_compatibility)"):
            thread.join(10)


WIRES = ["rest", "grpc"]
"""How a test's qdrant-client talks to embedshift: REST, or gRPC (``prefer_grpc=True``)."""


async def qdrant_grpc(proxy: Proxy) -> GrpcEdge:
    """Qdrant's gRPC API over ``proxy``'s parts, on a port of its own (``edge.port``), as
    `serve --qdrant-grpc-port` builds it; stop it with ``edge.stop(0)``."""
    edge = GrpcEdge(Parts(proxy.app[SETTINGS], proxy.app[SEARCHER], proxy.app[TRACER],
                          proxy.app[INGESTOR], proxy.app[EMBEDDER], proxy.app[READY]),
                    "127.0.0.1", 0)
    await edge.start(None)
    return edge


def wire_args(url: str, grpc_port: int | None) -> dict[str, Any]:
    """qdrant-client's arguments for ``url`` (its version check stays on REST), over gRPC when
    ``grpc_port`` is given."""
    if grpc_port is None:
        return {"url": url}
    return {"url": url, "prefer_grpc": True, "grpc_port": grpc_port}


HTTP_OF = {grpc.StatusCode.INVALID_ARGUMENT: 400, grpc.StatusCode.UNAUTHENTICATED: 401,
           grpc.StatusCode.PERMISSION_DENIED: 403, grpc.StatusCode.NOT_FOUND: 404,
           grpc.StatusCode.RESOURCE_EXHAUSTED: 429, grpc.StatusCode.UNAVAILABLE: 503,
           grpc.StatusCode.INTERNAL: 500}
"""The REST status each gRPC code stands for, so one assertion reads both wires."""


def refusal(exc: BaseException) -> tuple[int, str]:
    """A refusal as (REST status, message), whichever wire it came over."""
    if isinstance(exc, UnexpectedResponse):
        return exc.status_code or 0, exc.content.decode(errors="replace")
    if isinstance(exc, grpc.RpcError):
        return HTTP_OF.get(exc.code(), 0), exc.details() or ""
    raise exc
