"""Request bodies on the native edge, decoded strictly before any handler sees them: read as
every edge reads them (``proxy.http.read_body``: encoding, timeout, size), then decoded as every
edge decodes JSON (``proxy.http.decode``: UTF-8, nesting depth, then msgspec, each fault a 400
naming what is wrong).
"""

from __future__ import annotations

from typing import TypeVar

from aiohttp import web

from proxy import http
from proxy.http import decode
from proxy.web.keys import SETTINGS

T = TypeVar("T")
MAX_BODY_BYTES = 64 * 1024  # a search or an admin action
MAX_DOCUMENTS_BYTES = 8 * 1024 * 1024  # a batch of documents (the app's own ceiling)


async def read_body(request: web.Request, max_bytes: int = MAX_BODY_BYTES) -> bytes:
    return await http.read_body(request, max_bytes, request.app[SETTINGS].body_timeout_s)


async def read_json(request: web.Request, kind: type[T], max_bytes: int = MAX_BODY_BYTES) -> T:
    """The request's body decoded into ``kind``, strictly (see the module)."""
    return decode(await read_body(request, max_bytes), kind)
