"""JSON out, and the error boundary every request passes through (bodies in are decoded in
``proxy.web.bodies``; the app keys are in ``proxy.web.keys``).

Every failure is answered as JSON ``{"error": {"status", "type", "message", "field"?}}``; the
boundary maps each branch of the exception tree to one status, so no input yields a 500. A bug
still would: as JSON carrying a real trace id, logged with its traceback, and counted.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
import structlog
from aiohttp import HttpVersion11, web
from opentelemetry.trace import SpanKind, StatusCode

from proxy.http import public_message, status_of
from proxy.web.keys import METRICS, TRACER
from rollout_rules.errors import EmbedshiftError, RateLimited

log = structlog.get_logger("embedshift.http")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

_ENCODER = msgspec.json.Encoder()


def json_response(payload: Any, status: int = 200) -> web.Response:
    return web.Response(body=_ENCODER.encode(payload), status=status,
                        content_type="application/json")


def error_body(status: int, kind: str, message: str, field: str | None = None) -> bytes:
    """``{"error": {"status", "type", "message", "field"?}}``: every error, wherever answered."""
    error: dict[str, Any] = {"status": status, "type": kind, "message": message}
    if field is not None:
        error["field"] = field
    return _ENCODER.encode({"error": error})


def error_response(status: int, kind: str, message: str, field: str | None = None
                   ) -> web.Response:
    return web.Response(body=error_body(status, kind, message, field), status=status,
                        content_type="application/json")


UNMATCHED = "unmatched"
"""The name of the catch-all route (``proxy.web.routes``) and the label it is counted under."""
TRACE_ID = web.RequestKey("trace_id", str)
"""Where a handler that started its own span leaves the trace id, for the boundary to report."""


def route_of(request: web.Request) -> str:
    """The route's template (``/v1/aliases/{alias}/search``), never the raw path: a label
    must not take one value per alias or per probe of an unknown URL."""
    route = request.match_info.route
    if route.resource is None or route.name == UNMATCHED:
        return UNMATCHED
    return route.resource.canonical


@web.middleware
async def boundary(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The one error boundary: every failure becomes a JSON error, every answer is counted by
    route, method and status, and every 5xx is logged with its type, message and traceback."""
    try:
        response = await handler(request)
    except EmbedshiftError as exc:
        response = error_response(status_of(exc), type(exc).__name__, public_message(exc),
                                  getattr(exc, "field", None))
        if isinstance(exc, RateLimited):
            response.headers["Retry-After"] = str(math.ceil(exc.retry_after_s))
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        response = error_response(exc.status, type(exc).__name__, _message(exc))
        if "Allow" in exc.headers:  # a 405 says what the path takes
            response.headers["Allow"] = exc.headers["Allow"]
    except Exception as exc:  # noqa: BLE001 - the boundary: whatever escaped is a 500
        response = _internal_error(request, exc)
    request.app[METRICS].http(route_of(request), request.method, response.status).inc()
    return response


async def expect_continue(request: web.Request) -> web.StreamResponse | None:
    """The ``Expect`` header, answered before the middlewares run: ``100-continue`` goes on,
    anything else is a JSON 417 (aiohttp's own answer is plain text)."""
    expect = request.headers.get("Expect", "")
    if expect.lower() == "100-continue" and request.version == HttpVersion11:
        await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        request.writer.output_size = 0
        return None
    return error_response(417, "ExpectationFailed", "only 'Expect: 100-continue' is supported")


def _message(exc: web.HTTPException) -> str:
    """The exception's own text when it says more than its status line."""
    text = exc.text or ""
    return text if text and not text.startswith(f"{exc.status}:") else exc.reason


def _internal_error(request: web.Request, exc: Exception) -> web.Response:
    route = route_of(request)
    trace_id = request.get(TRACE_ID)
    if trace_id is None:
        span = request.app[TRACER].start_span(f"{request.method} {route}",
                                              kind=SpanKind.SERVER)
        span.record_exception(exc)
        span.set_status(StatusCode.ERROR, type(exc).__name__)
        span.end()
        trace_id = format(span.get_span_context().trace_id, "032x")
    log.error("unhandled_error", route=route, method=request.method,
              error_type=type(exc).__name__, error=str(exc)[:500], trace_id=trace_id,
              exc_info=exc)
    return error_response(500, "InternalError", f"internal error (trace {trace_id})")
