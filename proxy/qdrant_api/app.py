"""The Qdrant-compatible API as an aiohttp app of its own, served on its own port.

It is built from the native app's parts (``make_qdrant_app``): the same searcher, so a user's
version, stickiness, caches, metrics and guard cohorts are the same whichever API they come
through. Routes are Qdrant's paths; what this edge does not serve is a Qdrant-shaped 404 naming
it. With ``qdrant_read_key`` set, every route but the version and health checks asks for it
(``api-key`` header, or ``Authorization: Bearer``), compared in constant time.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

import msgspec
import structlog
from aiohttp import HttpVersion11, web
from opentelemetry.trace import Tracer

from proxy.config import Settings
from proxy.http import ERROR_SHAPE, read_body
from proxy.ingest.writer import Ingestor
from proxy.qdrant_api import handlers
from proxy.qdrant_api.handlers import (
    MAX_BODY_BYTES,
    TRACE_HEADER,
    VERSION_HEADER,
    Call,
    Parts,
    Reply,
    check_access,
    given_key,
    refusal_of,
    too_large,
)
from proxy.qdrant_api.shapes import QDRANT_VERSION, answer, check_name, error
from proxy.serving.embed import Embedder
from proxy.serving.readiness import Lifecycle, close_when_draining
from proxy.serving.search import Searcher
from rollout_rules.errors import EmbedshiftError

log = structlog.get_logger("embedshift.qdrant_api")
_ENCODER = msgspec.json.Encoder()
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Answers = Callable[[Call], Awaitable[Reply]]
PARTS = web.AppKey("qdrant_parts", Parts)

WRITES: list[tuple[str, str, Answers]] = [
    ("PUT", "/collections/{name}", handlers.create_collection),
    ("DELETE", "/collections/{name}", handlers.delete_collection),
    ("PUT", "/collections/{name}/index", handlers.create_index),
    ("DELETE", "/collections/{name}/index/{key}", handlers.delete_index),
    ("PUT", "/collections/{name}/points", handlers.upsert),
    ("POST", "/collections/{name}/points/delete", handlers.delete_points),
    ("POST", "/collections/{name}/points/payload", handlers.set_payload),
    ("PUT", "/collections/{name}/points/payload", handlers.overwrite_payload),
    ("POST", "/collections/{name}/points/payload/delete", handlers.delete_payload),
    ("POST", "/collections/{name}/points/payload/clear", handlers.clear_payload),
]
"""Routes that change what is stored: the write key, always."""
ROUTES: list[tuple[str, str, Answers]] = [
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
    ("GET", "/collections/{name}/points/{key}", handlers.retrieve_one),
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
        return _qdrant_error(*refusal_of(exc), started)
    except web.HTTPException as exc:
        return _qdrant_error(exc.status, exc.text or exc.reason, started)
    except Exception:
        log.exception("qdrant_api_error", path=request.path)
        return _qdrant_error(500, "internal error", started)


OPEN_PATHS = frozenset({"/", "/healthz", "/livez", "/readyz"})
"""Open whatever the key, as in Qdrant: they tell only that it runs, and which API version."""


WRITE = web.AppKey("qdrant_write_handlers", frozenset)


def _check_key(request: web.Request) -> None:
    if request.method == "GET" and request.path in OPEN_PATHS:
        return
    check_access(request.app[PARTS].settings, given_key(request.headers),
                 writing=request.match_info.handler in request.app[WRITE])


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


def _rest(answers: Answers) -> Handler:
    """An aiohttp handler for ``answers``: the request handed over as a ``Call``, the reply
    answered in Qdrant's JSON, the version and trace ids in headers."""
    async def handle(request: web.Request) -> web.Response:
        started = time.perf_counter()
        parts = request.app[PARTS]
        body = await read_body(request, MAX_BODY_BYTES, parts.settings.body_timeout_s) \
            if request.can_read_body else b""
        call = Call(parts, request.match_info.get("name", ""), request.headers, body or b"",
                    request.match_info.get("key", ""))
        reply = await answers(call)
        encoded = _ENCODER.encode(answer(reply.result, time.perf_counter() - started))
        refused = too_large(len(encoded), reply.max_bytes)
        if refused is not None:
            raise refused
        response = web.Response(body=encoded, content_type="application/json")
        if reply.version is not None:
            response.headers[VERSION_HEADER] = reply.version
        if call.traces:  # answers routed through embedshift: as POST /v1/feedback takes them
            response.headers[TRACE_HEADER] = ",".join(call.traces)
        return response

    handle.__name__ = handle.__qualname__ = answers.__name__
    return handle


async def _root(request: web.Request) -> web.Response:
    return web.json_response({"title": "qdrant - vector search engine (embedshift)",
                              "version": QDRANT_VERSION})


async def _healthz(request: web.Request) -> web.Response:
    """Liveness (``/healthz``, ``/livez``): the process answers, draining or not (a probe that
    failed here would have it killed mid-drain)."""
    return web.Response(text="healthz check passed")


async def _readyz(request: web.Request) -> web.Response:
    """Readiness: 503 from the moment a shutdown begins, so load balancers send no more."""
    if request.app[PARTS].lifecycle.draining:
        return web.Response(text="draining: shutting down", status=503)
    return web.Response(text="all shards are ready")


PROBES: list[tuple[str, str, Handler]] = [
    ("GET", "/", _root), ("GET", "/healthz", _healthz), ("GET", "/livez", _healthz),
    ("GET", "/readyz", _readyz)]


def make_qdrant_app(settings: Settings, searcher: Searcher, tracer: Tracer,
                    ingestor: Ingestor, embedder: Embedder, *,
                    lifecycle: Lifecycle | None = None) -> web.Application:
    """``lifecycle``: the process's (the native app's), so both edges drain together."""
    app = web.Application(middlewares=[boundary], client_max_size=handlers.MAX_BODY_BYTES)
    app[PARTS] = Parts(settings, searcher, tracer, ingestor, embedder,
                       lifecycle if lifecycle is not None else Lifecycle(started=True))
    app.on_response_prepare.append(close_when_draining(app[PARTS].lifecycle))
    writes = [(method, path, _rest(answers)) for method, path, answers in WRITES]
    app[WRITE] = frozenset(handler for _, _, handler in writes)
    app[ERROR_SHAPE] = _shape
    reads = [(method, path, _rest(answers)) for method, path, answers in ROUTES]
    for method, path, handler in [*PROBES, *writes, *reads]:
        app.router.add_route(method, path, handler, expect_handler=_expect_continue)
    app.router.add_route("*", "/{path:.*}", _not_served, expect_handler=_expect_continue)
    return app
