"""``POST /v1/aliases/{alias}/search``: one server span per query, continuing ``traceparent``.

The span is started and made current by hand rather than with ``start_as_current_span``: the
two generator-based context managers that wraps cost more than the span itself on a query
answered from the caches.
"""

from __future__ import annotations

import msgspec
import structlog
from aiohttp import web
from opentelemetry import context, trace
from opentelemetry.propagate import extract
from opentelemetry.trace import SpanKind, StatusCode

from proxy.http import random_key, status_of
from proxy.serving.query import SearchRequest, asked
from proxy.telemetry import Attr
from proxy.web.auth import check_override
from proxy.web.bodies import read_json
from proxy.web.errors import TRACE_ID, json_response
from proxy.web.keys import SEARCHER, SETTINGS, TRACER
from rollout_rules.errors import BackendError, RuleError

VERSION_HEADER = "X-Embedshift-Version"
SPAN_NAME = "POST /v1/aliases/{alias}/search"
log = structlog.get_logger("embedshift.http")


def incoming_context(request: web.Request) -> context.Context | None:
    """The caller's trace context (``traceparent``, ``baggage``); a header the propagators
    cannot read starts a fresh trace rather than failing the search."""
    try:
        return extract(request.headers)
    except Exception:  # noqa: BLE001 - any propagator failure means "no usable context"
        log.info("trace_context_ignored", reason="unreadable propagation header")
        return None


async def search(request: web.Request) -> web.Response:
    alias = request.match_info["alias"]
    body = await read_json(request, SearchRequest)
    if body.limit > request.app[SETTINGS].max_limit:
        raise RuleError("limit", f"may be at most {request.app[SETTINGS].max_limit} (max_limit)")
    header = request.headers.get(VERSION_HEADER)
    if header is not None and body.version is None:
        body = msgspec.structs.replace(body, version=header)
    if body.version is not None:
        check_override(request)
    searcher = request.app[SEARCHER]
    span = request.app[TRACER].start_span(SPAN_NAME, kind=SpanKind.SERVER,
                                          context=incoming_context(request))
    request[TRACE_ID] = format(span.get_span_context().trace_id, "032x")
    # current only when it records: its stages' spans are then its children (and the shadow
    # task's, which copies the context); an unsampled span is handed over, never attached
    token = context.attach(trace.set_span_in_context(span)) if span.is_recording() else None
    try:  # the answer sets the span's attributes, the alias among them, in one call
        answer = await searcher.search(alias, asked(body, random_key()), span)
    except TimeoutError as exc:
        span.set_attribute(Attr.ALIAS, alias)
        span.set_status(StatusCode.ERROR, "deadline exceeded")
        raise BackendError(f"no answer within {searcher.deadline_s:g}s") from exc
    except Exception as exc:
        span.set_attribute(Attr.ALIAS, alias)
        span.record_exception(exc)
        if status_of(exc) >= 500:  # a caller's mistake (4xx) is not the server's error
            span.set_status(StatusCode.ERROR, str(exc))
        raise
    finally:
        if token is not None:
            context.detach(token)
        span.end()
    return json_response(answer)
