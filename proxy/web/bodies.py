"""Request bodies, decoded strictly before any handler sees them.

In order: the content encoding must be one we decode (identity, gzip, deflate; else 415); the body
must arrive within the body timeout (else 408), decompress cleanly, be UTF-8 and nest no deeper than
``MAX_DEPTH`` (else 400, naming what is wrong); only then does msgspec decode it into the handler's
type, and a field that does not fit is a 400 naming the field.
"""

from __future__ import annotations

import asyncio
from typing import TypeVar

import msgspec
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from proxy.web.keys import SETTINGS
from rollout_rules.errors import RuleError
from rollout_rules.model import rule_error

T = TypeVar("T")
MAX_BODY_BYTES = 64 * 1024  # a search or an admin action
MAX_DOCUMENTS_BYTES = 8 * 1024 * 1024  # a batch of documents (the app's own ceiling)
ENCODINGS = frozenset({"", "identity", "gzip", "deflate"})
MAX_DEPTH = 32
_OPEN, _CLOSE, _QUOTE, _ESCAPE = frozenset(b"[{"), frozenset(b"]}"), ord('"'), ord("\\")


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


def too_deep(body: bytes, limit: int = MAX_DEPTH) -> bool:
    """Whether JSON text opens more than ``limit`` arrays or objects inside one another.
    Brackets inside strings do not count. Counting the brackets first keeps the usual body off
    the byte-by-byte path."""
    if body.count(b"[") + body.count(b"{") <= limit:
        return False
    depth, in_string, escaped = 0, False, False
    for byte in body:
        if in_string:
            if escaped:
                escaped = False
            elif byte == _ESCAPE:
                escaped = True
            elif byte == _QUOTE:
                in_string = False
        elif byte == _QUOTE:
            in_string = True
        elif byte in _OPEN:
            depth += 1
            if depth > limit:
                return True
        elif byte in _CLOSE:
            depth -= 1
    return False


def decode(body: bytes, kind: type[T]) -> T:
    """``body`` as ``kind``: RuleError naming the field, or what is wrong with the text."""
    if not body:
        raise RuleError("body", "a JSON object is required")
    try:
        body.decode()
    except UnicodeDecodeError as exc:
        raise RuleError("body", f"not valid UTF-8 (byte {exc.start})") from None
    if too_deep(body):
        raise RuleError("body", f"nests deeper than {MAX_DEPTH} levels")
    try:
        return msgspec.json.decode(body, type=kind)
    except msgspec.ValidationError as exc:
        raise rule_error(str(exc)) from exc
    except msgspec.DecodeError as exc:
        raise RuleError("body", f"not valid JSON: {exc}") from exc


async def read_json(request: web.Request, kind: type[T], max_bytes: int = MAX_BODY_BYTES) -> T:
    """The request's body decoded into ``kind``, strictly (see the module)."""
    return decode(await read_body(request, max_bytes), kind)
