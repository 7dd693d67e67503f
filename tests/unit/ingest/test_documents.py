"""Points an application wrote are read as documents: their text found, their ids kept."""

from __future__ import annotations

import json
import uuid

import pytest

from proxy.ingest.documents import (
    Document,
    VectorPoint,
    document_of,
    point_id,
    text_in,
    vector_payload,
)
from proxy.vectors.base import RESERVED, UNRECORDED_MODEL
from rollout_rules.model import Target, Version

NODE = json.dumps({"id_": "n1", "text": "a node's text", "metadata": {}})
UID = str(uuid.UUID(int=7))


def _version(text_field: str = "", shared: bool = False) -> Version:
    target = Target(collection="c", payload_match={"v": "1"} if shared else {})
    return Version(name="v1", model="org/m", dimensions=2, target=target, text_field=text_field)


@pytest.mark.parametrize(("payload", "text"), [
    ({"text": "plain"}, "plain"),
    ({"page_content": "langchain's", "metadata": {}}, "langchain's"),
    ({"content": "content"}, "content"),
    ({"_node_content": NODE}, "a node's text"),
    ({"_node_content": "not json"}, None),
    ({"text": "   ", "page_content": "the next that holds some"}, "the next that holds some"),
    ({"title": "no text field"}, None),
])
def test_the_text_is_found_where_applications_keep_it(payload: dict[str, object],
                                                      text: str | None) -> None:
    assert text_in(payload) == text


def test_a_point_without_an_envelope_is_a_document_under_its_point_id() -> None:
    payload = {"page_content": "a  lake\nfrozen", "metadata": {"n": 1}}
    assert document_of(payload) is None  # no text field named: not ours to read
    assert document_of(payload, UID, "page_content") == Document(
        id=UID, text="a lake frozen", payload=payload)
    assert document_of(payload, 3, "text") is None  # the field named holds nothing


def test_an_adopted_versions_points_keep_the_applications_ids() -> None:
    assert point_id(UID, _version("page_content")) == UID
    assert point_id(UID, _version()) != UID  # ours: a UUID of the id
    assert point_id("not-a-uuid", _version("page_content")) != "not-a-uuid"
    assert point_id(5, _version("page_content")) == 5
    plain = Version(name="plain", model=UNRECORDED_MODEL, dimensions=2,
                    target=Target(collection="theirs"))
    assert point_id(UID, plain) == UID  # the application's own collection: its ids as they are


def test_a_writers_vector_keeps_its_text_for_the_backfill_when_the_payload_has_it() -> None:
    with_text = vector_payload(VectorPoint(1, [0.1, 0.2], {"page_content": "hi there"}),
                               _version())
    assert with_text[RESERVED]["text"] == "hi there" and with_text["page_content"] == "hi there"
    without = vector_payload(VectorPoint(2, [0.1, 0.2], {"title": "t"}), _version())
    assert "text" not in without[RESERVED] and document_of(without) is None
