"""What every HTTP edge (the native API in ``proxy.web``, Qdrant's in ``proxy.qdrant_api``)
shares: one request reader, callers' JSON decoded strictly, and the status each kind of error is
answered with.

``read_body`` reads a body the same way on every port, in order: the content encoding must be one
we decode (identity, gzip, deflate; else 415); the body must arrive within the body timeout (else
408) and fit the size limit (else 413), and decompress cleanly (else a 400 naming the encoding).
A client that goes away mid-body is an info line (``client_dropped``), not an error.

``decode`` then reads the bytes: UTF-8, nesting no deeper than ``MAX_DEPTH`` (else a RuleError
naming what is wrong: deep nesting would otherwise exhaust a parser's recursion), and only then
does msgspec decode them into the handler's type; a field that does not fit is a RuleError naming
the field.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from typing import TypeVar

import msgspec
import structlog
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from rollout_rules.errors import (
    AccessError,
    BackendError,
    ConflictError,
    EmbedshiftError,
    EncoderInputError,
    FeatureOff,
    ModelError,
    NotFoundError,
    RateLimited,
    RuleError,
    StoreUnavailable,
    TransitionError,
)
from rollout_rules.model import rule_error

log = structlog.get_logger("embedshift.http")
T = TypeVar("T")
MAX_DEPTH = 32
ENCODINGS = frozenset({"", "identity", "gzip", "deflate"})
_OPEN, _CLOSE, _QUOTE, _ESCAPE = frozenset(b"[{"), frozenset(b"]}"), ord('"'), ord("\\")

ErrorShape = Callable[[int, str], bytes]
"""An edge's error body for a status and a message (the native API's, or Qdrant's)."""
ERROR_SHAPE: web.AppKey[ErrorShape] = web.AppKey("error_shape")
"""Where an app keeps its shape, for what answers before any handler runs (a request that is not
HTTP, a refused connection): the connection layer is shared, the answer's shape is the edge's."""

STATUS: dict[type[EmbedshiftError], int] = {  # first match wins: subclasses first
    FeatureOff: 403, AccessError: 401, RuleError: 400, EncoderInputError: 400,
    NotFoundError: 404, RateLimited: 429, ConflictError: 409, TransitionError: 409,
    StoreUnavailable: 503,
    BackendError: 503, ModelError: 503,
}


def public_message(exc: EmbedshiftError) -> str:
    """What a caller is told of ``exc``: a store's failure without the engine's own words
    (logged instead, at warning), anything else as it says."""
    public = getattr(exc, "public", None)
    if public is None or public == str(exc):
        return str(exc)
    log.warning("backend_error", error=str(exc))
    return str(public)


def status_of(exc: BaseException) -> int:
    """The HTTP status an exception is answered with (500 for anything unforeseen)."""
    return next((code for kind, code in STATUS.items() if isinstance(exc, kind)), 500)


def random_key() -> str:
    """The key a caller with no stickiness key is bucketed by: uniform, not secret (an OS
    random draw per request cost 2% of the proxy's time under load)."""
    return f"{random.getrandbits(64):016x}"


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


async def read_body(request: web.Request, max_bytes: int, timeout_s: float) -> bytes:
    """The request's whole body, read as every edge reads one (see the module)."""
    if request.content_length is not None and request.content_length > max_bytes:
        raise web.HTTPRequestEntityTooLarge(max_bytes, request.content_length)
    encoding = request.headers.get("Content-Encoding", "").strip().lower()
    if encoding not in ENCODINGS:
        raise web.HTTPUnsupportedMediaType(  # the value is not echoed: headers can hold secrets
            text="this Content-Encoding is not supported: send identity, gzip or deflate")
    try:
        if request.content.is_eof():  # all there already (the usual small body): no timer
            body = await request.read()
        else:
            async with asyncio.timeout(timeout_s):
                body = await request.read()
    except TimeoutError:
        raise web.HTTPRequestTimeout(
            text=f"the body did not arrive within {timeout_s:g}s") from None
    except (HttpProcessingError, web.RequestPayloadError, ConnectionError) as exc:
        if _gone(request):  # nobody reads the answer: say so once, quietly
            log.info("client_dropped", path=request.path, during="body")
            raise RuleError("body", "the client closed the connection mid-body") from exc
        raise RuleError("body", f"does not decode as its Content-Encoding "
                                f"({encoding or 'identity'}) says") from exc
    if len(body) > max_bytes:  # chunked, or decompressed past the limit
        raise web.HTTPRequestEntityTooLarge(max_bytes, len(body))
    return body


def _gone(request: web.Request) -> bool:
    transport = request.transport
    return transport is None or transport.is_closing()
