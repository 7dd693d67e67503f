"""What a query's spans say, from what the request path already knows: the one place that
names a span's attributes (``proxy.telemetry.Attr``: OpenTelemetry's feature-flag and database
conventions, and embedshift's own). Pure."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

from proxy.serving.query import Found
from proxy.telemetry import Attr
from rollout_rules.decide import Decision
from rollout_rules.model import Version

Attributes = Mapping[str, str | bool | int | float]


def answer_attributes(alias: str, version: Version, decision: Decision, found: Found
                      ) -> Attributes:
    """The request's span, once a version answered: which, why, from what rule, and how."""
    return {Attr.ALIAS: alias, Attr.VERSION: version.name, Attr.MODEL_ID: version.model,
            Attr.REASON: str(decision.reason), Attr.RULE_REVISION: str(decision.revision),
            Attr.BUCKET: decision.bucket if decision.bucket is not None else -1,
            Attr.EFFECTIVE_PERCENT: decision.effective_percent,
            Attr.DB_COLLECTION: version.target.collection, Attr.HIT_COUNT: len(found.hits),
            Attr.CACHE_HIT: found.vector_cached, Attr.RESULT_CACHE_HIT: found.result_cached,
            Attr.PROVIDER: "embedshift"}


def stage_attributes(version: Version, stage: Literal["encode", "search"],
                     hits: int | None = None) -> Attributes:
    """A stage's span: the version's encoding of the query, or its collection's search (with
    the hits it found, once it is over)."""
    own: dict[str, str | bool | int | float] = {Attr.VERSION: version.name,
                                                 Attr.MODEL_ID: version.model}
    if stage == "search":
        own.update({Attr.DB_SYSTEM: "qdrant", Attr.DB_OPERATION: "query",
                    Attr.DB_COLLECTION: version.target.collection})
        if hits is not None:
            own[Attr.HIT_COUNT] = hits
    return own
