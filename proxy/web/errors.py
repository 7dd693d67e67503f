"""What every handler shares: JSON in and out, and the error middleware (the app keys are in
``proxy.web.keys``).

Every failure is answered as JSON ``{"error": {"status", "type", "message", "field"?}}``; the
middleware maps each branch of the exception tree to one status, so no input yields a 500 (a bug
still would, as JSON with the trace id, and logged).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import msgspec
import structlog
from aiohttp import web
from opentelemetry import trace

from rollout_rules.errors import (
    BackendError,
    ConflictError,
    EmbedshiftError,
    EncoderInputError,
    ModelError,
    NotFoundError,
    RuleError,
    StoreUnavailable,
    TransitionError,
)
from rollout_rules.model import rule_error

log = structlog.get_logger("embedshift.http")
T = TypeVar("T")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

STATUS: dict[type[EmbedshiftError], int] = {
    RuleError: 400, EncoderInputError: 400, NotFoundError: 404, ConflictError: 409,
    TransitionError: 409, StoreUnavailable: 503, BackendError: 503, ModelError: 503,
}
_ENCODER = msgspec.json.Encoder()


def status_of(exc: BaseException) -> int:
    """The HTTP status an exception is answered with (500 for anything unforeseen)."""
    return next((code for kind, code in STATUS.items() if isinstance(exc, kind)), 500)


def json_response(payload: Any, status: int = 200) -> web.Response:
    return web.Response(body=_ENCODER.encode(payload), status=status,
                        content_type="application/json")


def error_response(status: int, kind: str, message: str, field: str | None = None
                   ) -> web.Response:
    error: dict[str, Any] = {"status": status, "type": kind, "message": message}
    if field is not None:
        error["field"] = field
    return json_response({"error": error}, status)


async def read_json(request: web.Request, kind: type[T]) -> T:
    """The body decoded into ``kind``; RuleError naming the field otherwise."""
    body = await request.read()
    if not body:
        raise RuleError("body", "a JSON object is required")
    try:
        return msgspec.json.decode(body, type=kind)
    except msgspec.ValidationError as exc:
        raise rule_error(str(exc)) from exc
    except msgspec.DecodeError as exc:
        raise RuleError("body", f"not valid JSON: {exc}") from exc


@web.middleware
async def errors_as_json(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except EmbedshiftError as exc:
        return error_response(status_of(exc), type(exc).__name__, str(exc),
                              getattr(exc, "field", None))
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return error_response(exc.status, type(exc).__name__, exc.reason)
    except Exception:
        trace_id = format(trace.get_current_span().get_span_context().trace_id, "032x")
        log.exception("unhandled_error", path=request.path, trace_id=trace_id)
        return error_response(500, "InternalError", f"internal error (trace {trace_id})")
