"""``POST /v1/aliases/{alias}/search``: one server span per query, continuing ``traceparent``."""

from __future__ import annotations

import asyncio
import uuid

import msgspec
from aiohttp import web
from opentelemetry.propagate import extract
from opentelemetry.trace import SpanKind

from proxy.handlers.common import json_response, read_json
from proxy.handlers.keys import SEARCHER, SETTINGS, TRACER
from proxy.search import SearchRequest
from proxy.telemetry import Attr
from rollout_rules.errors import BackendError

VERSION_HEADER = "X-Embedshift-Version"


async def search(request: web.Request) -> web.Response:
    alias = request.match_info["alias"]
    body = await read_json(request, SearchRequest)
    header = request.headers.get(VERSION_HEADER)
    if header is not None and body.version is None:
        body = msgspec.structs.replace(body, version=header)
    tracer, deadline = request.app[TRACER], request.app[SETTINGS].request_timeout_s
    with tracer.start_as_current_span("POST /v1/aliases/{alias}/search", kind=SpanKind.SERVER,
                                      context=extract(request.headers),
                                      attributes={Attr.ALIAS: alias}):
        try:
            async with asyncio.timeout(deadline):
                answer = await request.app[SEARCHER].search(alias, body, uuid.uuid4().hex)
        except TimeoutError as exc:
            raise BackendError(f"no answer within {deadline:g}s") from exc
    return json_response(answer)
