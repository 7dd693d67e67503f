"""The Qdrant-compatible API as an aiohttp app of its own, served on its own port.

It is built from the native app's parts (``make_qdrant_app``): the same searcher, so a user's
version, stickiness, caches, metrics and guard cohorts are the same whichever API they come
through. Routes are Qdrant's paths; what this edge does not serve is a Qdrant-shaped 404 naming
it. With ``qdrant_read_key`` set, every route but the version and health checks asks for it
(``api-key`` header, or ``Authorization: Bearer``), compared in constant time.
"""

from __future__ import annotations

import hmac
import time
from collections.abc import Awaitable, Callable

import msgspec
import structlog
from aiohttp import HttpVersion11, web
from opentelemetry.trace import Tracer

from proxy.config import Settings
from proxy.http import ERROR_SHAPE, public_message, status_of
from proxy.ingest.writer import Ingestor
from proxy.qdrant_api import handlers
from proxy.qdrant_api.handlers import PARTS, Parts
from proxy.qdrant_api.shapes import check_name, error
from proxy.serving.embed import Embedder
from proxy.serving.readiness import Lifecycle, close_when_draining
from proxy.serving.search import Searcher
from rollout_rules.errors import (
    AccessError,
    EmbedshiftError,
    FeatureOff,
)

log = structlog.get_logger("embedshift.qdrant_api")
_ENCODER = msgspec.json.Encoder()
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

WRITES: list[tuple[str, str, Handler]] = [
    ("PUT", "/collections/{name}", handlers.create_collection),
    ("DELETE", "/collections/{name}", handlers.delete_collection),
    ("PUT", "/collections/{name}/index", handlers.create_index),
    ("PUT", "/collections/{name}/points", handlers.upsert),
    ("POST", "/collections/{name}/points/delete", handlers.delete_points),
    ("POST", "/collections/{name}/points/payload", handlers.set_payload),
    ("PUT", "/collections/{name}/points/payload", handlers.overwrite_payload),
    ("POST", "/collections/{name}/points/payload/delete", handlers.delete_payload),
    ("POST", "/collections/{name}/points/payload/clear", handlers.clear_payload),
]
"""Routes that change what is stored: the write key, always."""
ROUTES: list[tuple[str, str, Handler]] = [
    ("GET", "/", handlers.root),
    ("GET", "/healthz", handlers.healthz),
    ("GET", "/livez", handlers.healthz),
    ("GET", "/readyz", handlers.readyz),
    ("GET", "/collections", handlers.list_collections),
    ("GET", "/aliases", handlers.list_aliases),
    ("GET", "/collections/{name}", handlers.get_collection),
    ("GET", "/collections/{name}/exists", handlers.collection_exists),
    ("GET", "/collections/{name}/aliases", handlers.collection_aliases),
    ("POST", "/collections/{name}/points/query", handlers.query),
    ("POST", "/collections/{name}/points/query/batch", handlers.query_batch),
    ("POST", "/collections/{name}/points/query/groups", handlers.query_groups),
    ("POST", "/collections/{name}/points/recommend", handlers.recommend),
    ("POST", "/collections/{name}/points/search", handlers.search),
    ("POST", "/collections/{name}/points/search/batch", handlers.search_batch),
    ("POST", "/collections/{name}/points", handlers.retrieve),
    ("GET", "/collections/{name}/points/{id}", handlers.retrieve_one),
    ("POST", "/collections/{name}/points/scroll", handlers.scroll),
    ("POST", "/collections/{name}/points/count", handlers.count),
]


def _qdrant_error(status: int, message: str, started: float) -> web.Response:
    return web.Response(body=_ENCODER.encode(error(message, time.perf_counter() - started)),
                        status=status, content_type="application/json")


@web.middleware
async def boundary(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every failure answered as Qdrant answers one; the read key checked first."""
    started = time.perf_counter()
    try:
        _check_key(request)
        if "name" in request.match_info:
            check_name(request.match_info["name"])
        return await handler(request)
    except EmbedshiftError as exc:
        status, message = status_of(exc), public_message(exc)
        field = getattr(exc, "field", None)
        return _qdrant_error(status, f"{field}: {message}" if field and field not in message
                             else message, started)
    except web.HTTPException as exc:
        return _qdrant_error(exc.status, exc.text or exc.reason, started)
    except Exception:
        log.exception("qdrant_api_error", path=request.path)
        return _qdrant_error(500, "internal error", started)


OPEN_PATHS = frozenset({"/", "/healthz", "/livez", "/readyz"})
"""Open whatever the key, as in Qdrant: they tell only that it runs, and which API version."""


WRITE = web.AppKey("qdrant_write_handlers", frozenset)


def _check_key(request: web.Request) -> None:
    """Writes need the write key (off without one); reads the read key when one is set (the
    write key opens them too)."""
    settings = request.app[PARTS].settings
    given = _given_key(request)
    write = settings.qdrant_write_key
    writing = request.match_info.handler in request.app[WRITE]
    if writing and not write:
        raise FeatureOff("writes through the Qdrant API are off: set "
                         "EMBEDSHIFT_QDRANT_WRITE_KEY to enable them")
    if writing:
        if not _same(given, write):
            raise AccessError("a valid api-key with write access is required")
        return
    read = settings.qdrant_read_key
    if not read or (request.method == "GET" and request.path in OPEN_PATHS):
        return
    if not (_same(given, read) or (write and _same(given, write))):
        raise AccessError("a valid api-key is required")


def _given_key(request: web.Request) -> str | None:
    given = request.headers.get("api-key")
    if given is None:
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        given = token.strip() if scheme.lower() == "bearer" else None
    return given


def _same(given: str | None, expected: str | None) -> bool:
    return given is not None and expected is not None and hmac.compare_digest(
        given.encode("utf-8", "surrogateescape"), expected.encode())


def _shape(status: int, message: str) -> bytes:
    return _ENCODER.encode(error(message))


async def _expect_continue(request: web.Request) -> web.StreamResponse | None:
    """``Expect: 100-continue`` goes on; anything else is a 417 in Qdrant's shape."""
    if request.headers.get("Expect", "").lower() == "100-continue" and \
            request.version == HttpVersion11:
        await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        request.writer.output_size = 0
        return None
    return _qdrant_error(417, "only 'Expect: 100-continue' is supported", time.perf_counter())


async def _not_served(request: web.Request) -> web.Response:
    raise web.HTTPNotFound(text=f"{request.method} {request.path} is not served by "
                                "embedshift's Qdrant API (see the docs: what is supported)")


def make_qdrant_app(settings: Settings, searcher: Searcher, tracer: Tracer,
                    ingestor: Ingestor, embedder: Embedder, *,
                    lifecycle: Lifecycle | None = None) -> web.Application:
    """``lifecycle``: the process's (the native app's), so both edges drain together."""
    app = web.Application(middlewares=[boundary], client_max_size=handlers.MAX_BODY_BYTES)
    app[PARTS] = Parts(settings, searcher, tracer, ingestor, embedder,
                       lifecycle if lifecycle is not None else Lifecycle(started=True))
    app.on_response_prepare.append(close_when_draining(app[PARTS].lifecycle))
    app.on_response_prepare.append(handlers.trace_header)
    app[WRITE] = frozenset(handler for _, _, handler in WRITES)
    app[ERROR_SHAPE] = _shape
    for method, path, handler in [*WRITES, *ROUTES]:
        app.router.add_route(method, path, handler, expect_handler=_expect_continue)
    app.router.add_route("*", "/{path:.*}", _not_served, expect_handler=_expect_continue)
    return app
