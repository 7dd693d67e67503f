"""What a search asks and is answered, as the request path carries it: the request's body
(``SearchRequest``), the answer (``SearchResponse``), the query both attempts see (``Query``) and
a version's hits for it (``Found``). Types only: the searcher and the shadow both speak them."""

from __future__ import annotations

from typing import Annotated, Any, NamedTuple

import msgspec

from proxy.vectors.base import Hit

MAX_LIMIT = 100


class SearchRequest(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The body of ``POST /v1/aliases/{alias}/search``."""

    query: str
    user_id: Annotated[str, msgspec.Meta(max_length=256)] | None = None
    session_id: Annotated[str, msgspec.Meta(max_length=256)] | None = None
    tenant: Annotated[str, msgspec.Meta(max_length=256)] | None = None
    properties: dict[str, str] = msgspec.field(default_factory=dict)
    limit: Annotated[int, msgspec.Meta(ge=1, le=MAX_LIMIT)] = 10
    filter: dict[str, Any] | None = None
    with_payload: bool = True
    version: str | None = None


class RolloutInfo(msgspec.Struct, frozen=True, kw_only=True):
    alias: str
    bucket: int | None
    reason: str
    revision: int
    effective_percent: float


class SearchResponse(msgspec.Struct, frozen=True, kw_only=True):
    hits: list[Hit]
    model_version: str
    model: str
    collection: str
    rollout: RolloutInfo
    trace_id: str


class Query(NamedTuple):
    """One request's query as both attempts (candidate, then stable) see it."""

    text: str  # cleaned once, by clean_text
    request: SearchRequest
    filter: Any  # the request's filter, parsed once
    coverage: dict[str, float]  # the alias's coverage per version, read once
    deadline: float  # loop time by which both attempts must be done
    revision: int  # of the rule that decided it: the guard's cohorts are per revision
    slow_ms: float  # a store search longer than this counts as slow (the guard's p99 bound)
    traced: bool  # the request's span records: its stages get spans (else none is started)


class Found(NamedTuple):
    """A version's hits for a query, and which caches answered."""

    hits: list[Hit]
    result_cached: bool
    vector_cached: bool
