"""Request bodies, decoded strictly before any handler sees them.

In order: the content encoding must be one we decode (identity, gzip, deflate; else 415); the body
must arrive within the body timeout (else 408), decompress cleanly, then be decoded as every edge
decodes JSON (``proxy.http.decode``: UTF-8, nesting depth, then msgspec, each fault a 400 naming
what is wrong).
"""

from __future__ import annotations

import asyncio
from typing import TypeVar

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from proxy.http import decode
from proxy.web.keys import SETTINGS
from rollout_rules.errors import RuleError

T = TypeVar("T")
MAX_BODY_BYTES = 64 * 1024  # a search or an admin action
MAX_DOCUMENTS_BYTES = 8 * 1024 * 1024  # a batch of documents (the app's own ceiling)
ENCODINGS = frozenset({"", "identity", "gzip", "deflate"})


async def read_body(request: web.Request, max_bytes: int = MAX_BODY_BYTES) -> bytes:
    if request.content_length is not None and request.content_length > max_bytes:
        raise web.HTTPRequestEntityTooLarge(max_bytes, request.content_length)
    encoding = request.headers.get("Content-Encoding", "").strip().lower()
    if encoding not in ENCODINGS:
        raise web.HTTPUnsupportedMediaType(  # the value is not echoed: headers can hold secrets
            text="this Content-Encoding is not supported: send identity, gzip or deflate")
    timeout_s = request.app[SETTINGS].body_timeout_s
    try:
        if request.content.is_eof():  # all there already (the usual small body): no timer
            body = await request.read()
        else:
            async with asyncio.timeout(timeout_s):
                body = await request.read()
        if len(body) > max_bytes:  # chunked, or decompressed past the limit
            raise web.HTTPRequestEntityTooLarge(max_bytes, len(body))
        return body
    except TimeoutError:
        raise web.HTTPRequestTimeout(
            text=f"the body did not arrive within {timeout_s:g}s") from None
    except (HttpProcessingError, web.RequestPayloadError) as exc:  # not what its encoding says
        raise RuleError("body", f"does not decode as its Content-Encoding ({encoding}) says") \
            from exc


async def read_json(request: web.Request, kind: type[T], max_bytes: int = MAX_BODY_BYTES) -> T:
    """The request's body decoded into ``kind``, strictly (see the module)."""
    return decode(await read_body(request, max_bytes), kind)
