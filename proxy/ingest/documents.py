"""Documents as users bring them, and how each becomes a point in every version (pure).

A document is ``{"id": ..., "text": ..., "payload": {...}}``: a JSONL line or an item of the API's
body. In each version it becomes one point whose id is derived from the document id alone (so
writing it again replaces it: ingestion is idempotent), carrying the user's payload and, under
``_embedshift``, the source text and the envelope of the version that encoded it, so any vector
can be traced to the model that made it and re-encoded later by the backfill.

Point ids: a non-negative integer document id is its own point id; any other id, and any id in a
version that shares its collection with another (``payload_match``), becomes a UUID5 of the id
(and the version), so two versions' points never collide.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Iterator, Sequence
from typing import Annotated, Any

import msgspec

from proxy.vectors.base import DOC_ID, RESERVED, UNRECORDED_MODEL, Stored
from rollout_rules.errors import RuleError
from rollout_rules.model import Version, rule_error

DOC_ID_FIELD = f"{RESERVED}.{DOC_ID}"
TEXT_FIELD = f"{RESERVED}.text"
MAX_TEXT_CHARS = 100_000
MAX_ID_INT = 2**63 - 1
_NAMESPACE = uuid.UUID("8f0f6a39-4a0e-5a7e-9d6c-2e51f5e0a7b1")

DocId = (Annotated[int, msgspec.Meta(ge=0, le=MAX_ID_INT)]
         | Annotated[str, msgspec.Meta(min_length=1, max_length=256)])
PointId = int | str


class Document(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    id: DocId
    text: str
    payload: dict[str, Any] = msgspec.field(default_factory=dict)


def checked(document: Document) -> Document:
    """The document with its text cleaned; RuleError naming the field otherwise."""
    if RESERVED in document.payload:
        raise RuleError("payload", f"{RESERVED!r} is reserved for embedshift's own fields")
    text = " ".join(document.text.split())
    if not text:
        raise RuleError("text", "is empty")
    if len(text) > MAX_TEXT_CHARS:
        raise RuleError("text", f"is {len(text)} characters; the limit is {MAX_TEXT_CHARS}")
    return msgspec.structs.replace(document, text=text)


def decode_document(raw: bytes | str) -> Document:
    """One JSON document, checked; RuleError naming the field on any fault."""
    try:
        return checked(msgspec.json.decode(raw, type=Document))
    except msgspec.ValidationError as exc:
        raise rule_error(str(exc)) from exc
    except msgspec.DecodeError as exc:
        raise RuleError("line", f"not valid JSON ({exc})") from exc
    except UnicodeDecodeError as exc:
        raise RuleError("line", f"not UTF-8 (byte {exc.start}: "
                                f"{exc.object[exc.start:exc.start + 1]!r})") from exc


def read_lines(lines: Iterable[bytes | str]) -> Iterator[tuple[int, Document | RuleError]]:
    """(line number, document or what is wrong with it) for every non-blank line."""
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            yield number, decode_document(line)
        except RuleError as exc:
            yield number, exc


def parse_doc_id(text: str) -> DocId:
    """A document id as written in a URL path: the decimal form of an integer id (ASCII digits,
    no leading zero) is that integer; a JSON string in quotes (``"9010"``) is that string, so
    a string id made of digits can be named; any other text is a string id. RuleError naming
    ``doc_id`` when it is no id a document may have."""
    try:
        if text.startswith('"'):
            value: object = msgspec.json.decode(text)
        elif text.isascii() and text.isdigit() and str(int(text)) == text:
            value = int(text)
        else:
            value = text
        doc_id: DocId = msgspec.convert(value, type=DocId)
        return doc_id
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise RuleError("doc_id", f"{text!r} is not a document id: an integer from 0 to "
                                  f"{MAX_ID_INT}, or a string of 1 to 256 characters (in "
                                  f"JSON quotes when it is made of digits)") from exc


def point_id(doc_id: DocId, version: Version) -> PointId:
    """The document's point id in a version: stable, so writing again replaces it. In a
    collection its application wrote (adopted: ``text_field`` set; its own, passed through:
    no model recorded) a document is the point the application wrote: its id is the point id,
    a UUID as it is."""
    shared = bool(version.target.payload_match)
    if isinstance(doc_id, int) and not shared:
        return doc_id
    written_by_application = version.text_field or version.model == UNRECORDED_MODEL
    if written_by_application and not shared and isinstance(doc_id, str) and is_uuid(doc_id):
        return doc_id
    key = f"{version.name}\x00{doc_id!r}" if shared else repr(doc_id)
    return str(uuid.uuid5(_NAMESPACE, key))


NODE_CONTENT = "_node_content"
TEXT_FIELDS = ("text", "page_content", "content", NODE_CONTENT)
"""Payload keys where applications keep a point's text, in the order they are looked for
(LangChain writes ``page_content``; LlamaIndex keeps it inside the JSON of ``_node_content``)."""


def text_in(payload: dict[str, Any], fields: Sequence[str] = TEXT_FIELDS) -> str | None:
    """The text a point written by an application holds under the first of ``fields`` that
    holds some (``_node_content``: the ``text`` of the JSON it holds)."""
    for key in fields:
        value = payload.get(key)
        if key == NODE_CONTENT and isinstance(value, str):
            try:
                value = msgspec.json.decode(value).get("text")
            except (msgspec.DecodeError, AttributeError):
                continue
        if isinstance(value, str) and value.strip():
            return value
    return None


class VectorPoint(msgspec.Struct, frozen=True):
    """A point whose vector its writer made: no text of embedshift's encoded it."""

    id: DocId
    vector: list[float]
    payload: dict[str, Any] = msgspec.field(default_factory=dict)


def vector_payload(point: VectorPoint, version: Version) -> dict[str, Any]:
    """The writer's payload plus the envelope; the source text when the payload holds it (so
    the backfill can encode it into the other versions), none otherwise."""
    own: dict[str, Any] = {"doc_id": point.id, "model": version.model, "version": version.name,
                           "dimensions": version.dimensions, "metric": version.metric,
                           "normalized": version.normalized, "vector_from": "writer"}
    text = text_in(point.payload)
    if text is not None:
        own["text"] = " ".join(text.split())
    return {**point.payload, RESERVED: own}


def is_uuid(text: str) -> bool:
    """Whether ``text`` is a UUID in its usual hyphenated form (either case)."""
    try:
        return str(uuid.UUID(text)) == text.lower()
    except ValueError:
        return False


def point_payload(document: Document, version: Version) -> dict[str, Any]:
    """The user's payload plus the source text and the envelope of the encoding version."""
    return {**document.payload, RESERVED: {
        "doc_id": document.id, "text": document.text, "model": version.model,
        "version": version.name, "dimensions": version.dimensions, "metric": version.metric,
        "normalized": version.normalized}}


def document_of(payload: dict[str, Any], point: PointId | None = None,
                text_field: str = "") -> Document | None:
    """The document a stored point was made from; None when it carries no source text. A point
    embedshift did not write (an adopted collection's) is the document under its point id,
    its text read from ``text_field``."""
    own = payload.get(RESERVED)
    user = {k: v for k, v in payload.items() if k != RESERVED}
    if not isinstance(own, dict):
        text = text_in(payload, (text_field,)) if text_field and point is not None else None
        return None if text is None or point is None else Document(
            id=point, text=" ".join(text.split()), payload=user)
    if not isinstance(own.get("text"), str) or not isinstance(own.get("doc_id"), (int, str)):
        return None
    return Document(id=own["doc_id"], text=own["text"], payload=user)


def doc_id_of(point: Stored) -> Any:
    """The document a stored point was made from (its point id when written without one)."""
    own = point.payload.get(RESERVED)
    return own.get("doc_id", point.id) if isinstance(own, dict) else point.id
