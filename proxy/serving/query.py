"""What a search asks and is answered, as the request path carries it: the request's body
(``SearchRequest``), the search it asks decoded and checked once at the edge (``Asked``, by
``asked``: the text cleaned, the filter parsed, who asks), the answer (``SearchResponse``), the
query both attempts see (``Query``) and a version's hits for it (``Found``). The searcher and
the shadow both speak them; both edges (the native API and Qdrant's) build an ``Asked``."""

from __future__ import annotations

from typing import Annotated, Any, Literal, NamedTuple, Protocol

import msgspec
from qdrant_client import models

from proxy.config import MAX_LIMIT
from proxy.models.encoders import clean_text
from proxy.vectors.base import Fusion, Hit, Nearest, Sparse, Stage, parse_filter
from rollout_rules.decide import Context
from rollout_rules.online import Answer


class SparseIn(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    indices: list[Annotated[int, msgspec.Meta(ge=0, lt=2**32)]]
    values: list[float]


class PrefetchIn(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A search beside the text's, by a vector the application computed (a sparse BM25 one,
    say) in a vector the alias carries, ``using`` its name; fused with the text's hits."""

    using: Annotated[str, msgspec.Meta(max_length=255)]
    vector: list[float] | SparseIn
    limit: Annotated[int, msgspec.Meta(ge=1, le=MAX_LIMIT)] = 10


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
    prefetch: Annotated[list[PrefetchIn], msgspec.Meta(max_length=16)] | None = None
    fusion: Literal["rrf", "dbsf"] = "rrf"


class Asked(NamedTuple):
    """A search as the searcher takes it: decoded and checked once, at the edge."""

    text: str  # cleaned (clean_text): the text encoded and the cache's key
    filter: models.Filter | None  # parsed (parse_filter), for the store
    raw_filter: dict[str, Any] | None  # as given, for the result cache's key
    context: Context  # who asks: what routing reads
    limit: int
    with_payload: bool
    version: str | None  # a version asked for by name (the override token was checked)
    fused: Stage | None = None  # searches beside the text's, and their fusion (app's names)
    fused_key: bytes = b""  # what they are, for the result cache's key


def asked(request: SearchRequest, random_key: str) -> Asked:
    """The request's search, checked: RuleError names a bad text or filter (the caller's
    mistake, refused before anything is decided)."""
    fused = None if not request.prefetch else Stage(Fusion(request.fusion), request.limit, tuple(
        Stage(Nearest(p.using, p.vector if isinstance(p.vector, list)
                      else Sparse(p.vector.indices, p.vector.values)), p.limit)
        for p in request.prefetch))
    return Asked(clean_text(request.query), parse_filter(request.filter), request.filter,
                 Context(user_id=request.user_id, session_id=request.session_id,
                         tenant=request.tenant, properties=request.properties,
                         random_key=random_key),
                 request.limit, request.with_payload, request.version, fused,
                 b"" if fused is None else msgspec.json.encode([request.prefetch,
                                                                request.fusion]))


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

    asked: Asked
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


class AnswerSink(Protocol):
    """Where the searcher leaves each answer for its feedback (``proxy.online.recorder``)."""

    def answered(self, trace_id: str, answer: Answer, text: str,
                 top: float | None = None) -> None:
        """``top``: the best hit's score, higher meaning closer whatever the metric (None:
        none, or an interleaved answer's mix of two versions' scores)."""
