"""What both HTTP edges (the native API in ``proxy.web``, Qdrant's in ``proxy.qdrant_api``) share:
callers' JSON decoded strictly, and the status each kind of error is answered with.

A body must be UTF-8 and nest no deeper than ``MAX_DEPTH`` (else a RuleError naming what is
wrong: deep nesting would otherwise exhaust a parser's recursion), and only then does msgspec
decode it into the handler's type; a field that does not fit is a RuleError naming the field.
"""

from __future__ import annotations

import random
from typing import TypeVar

import msgspec

from rollout_rules.errors import (
    AccessError,
    BackendError,
    ConflictError,
    EmbedshiftError,
    EncoderInputError,
    FeatureOff,
    ModelError,
    NotFoundError,
    RuleError,
    StoreUnavailable,
    TransitionError,
)
from rollout_rules.model import rule_error

T = TypeVar("T")
MAX_DEPTH = 32
_OPEN, _CLOSE, _QUOTE, _ESCAPE = frozenset(b"[{"), frozenset(b"]}"), ord('"'), ord("\\")

STATUS: dict[type[EmbedshiftError], int] = {  # first match wins: subclasses first
    FeatureOff: 403, AccessError: 401, RuleError: 400, EncoderInputError: 400,
    NotFoundError: 404, ConflictError: 409, TransitionError: 409, StoreUnavailable: 503,
    BackendError: 503, ModelError: 503,
}


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
