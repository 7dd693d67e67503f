"""A caller's sticky key through the Qdrant API: a header, or (when asked) its api-key's hash."""

from __future__ import annotations

from typing import Any

from multidict import CIMultiDict

from proxy.config import Settings
from proxy.qdrant_api.handlers import Call, Parts, affinity


def _request(headers: dict[str, str], **settings: Any) -> Call:
    parts = Parts(Settings(**settings), None, None, None, None, None)  # type: ignore[arg-type]
    return Call(parts, "a", CIMultiDict(headers))


def test_the_configured_header_then_qdrants_own_is_the_sticky_key() -> None:
    assert affinity(_request({"x-qdrant-route-affinity": "alice"})) == "alice"
    assert affinity(_request({"x-user": "bob", "x-qdrant-route-affinity": "alice"},
                             qdrant_affinity_header="x-user")) == "bob"
    assert affinity(_request({})) is None


def test_an_api_key_is_an_identity_only_when_asked_and_never_shown() -> None:
    assert affinity(_request({"api-key": "secret-key"})) is None
    identity = affinity(_request({"api-key": "secret-key"}, qdrant_affinity_from_key=True))
    assert identity is not None and identity.startswith("api-key:")
    assert "secret" not in identity
    assert identity == affinity(_request({"api-key": "secret-key"},
                                         qdrant_affinity_from_key=True))  # sticky
    assert identity != affinity(_request({"api-key": "other-key"},
                                         qdrant_affinity_from_key=True))
