"""Adopting a collection an application wrote as an alias's stable version, without rewriting a
point.

``adopt`` inspects the collection (size, distance, points, payload keys, which key holds the
text), re-encodes a sample of the stored texts with the model named, and refuses unless the
stored vectors are that model's (median cosine at least ``MIN_MEDIAN_COSINE``, reported either
way). Then it declares the alias with that collection as v1: ids stay the application's, the
backfill reads each point's text from the text field, and writes that keep arriving directly
into the collection are caught up by running the backfill again.
"""

from __future__ import annotations

import statistics
from typing import Any

import msgspec
import numpy as np

from proxy.ingest.documents import TEXT_FIELDS, text_in
from proxy.ingest.writer import Ingestor, encode
from proxy.vectors.base import RESERVED, CollectionInfo
from rollout_rules.errors import NotFoundError, RuleError, TransitionError
from rollout_rules.model import Carried, Rollout, Target, Version, check_rollout

MIN_MEDIAN_COSINE = 0.99
"""Vectors the named model made, re-encoded here, agree to about 0.999 (the same graph, other
runtimes); another model's agree far less (L6 against L3's vectors: about 0.1 to 0.5)."""
SAMPLE = 64


class AdoptRequest(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    collection: str
    model: str
    vector: str = ""
    text_field: str = ""
    sample: int = SAMPLE


class Adoption(msgspec.Struct, frozen=True, kw_only=True):
    alias: str
    collection: str
    vector: str
    model: str
    dimensions: int
    metric: str
    points: int
    payload_keys: list[str]
    text_field: str
    sampled: int
    median_cosine: float
    min_cosine: float
    adopted: bool
    revision: int | None = None
    carried: list[str] = msgspec.field(default_factory=list)
    """The collection's other vectors (a hybrid application's sparse one, say), as ``name
    (dense|sparse)``: the rule carries them, into every version as they are."""


async def adopt(ingestor: Ingestor, alias: str, request: AdoptRequest, actor: str
                ) -> Adoption:
    """Inspect, check and declare (see the module); RuleError (nothing declared) when the
    stored vectors are not the model's, ConflictError when the alias exists."""
    if RESERVED in (request.text_field or ""):
        raise RuleError("text_field", f"{RESERVED} is embedshift's own")
    if alias in await ingestor.rules.aliases():
        raise TransitionError(f"{alias} is declared already: adopt the collection as a new "
                              "alias")
    target = Target(collection=request.collection, vector_name=request.vector or None)
    info = await ingestor.store.describe(target)
    if info is None:
        raise NotFoundError(request.collection, "no collection of that name in the store")
    if info.missing is not None:
        raise RuleError("vector", info.missing)
    points, _ = await ingestor.store.scroll(target, None, max(1, min(request.sample, 1000)),
                                            vectors=True)
    keys = sorted({key for p in points for key in p.payload})
    field = request.text_field or _text_field(points)
    version = Version(name="v1", model=request.model, dimensions=info.dimensions,
                      metric=info.metric, target=target,  # type: ignore[arg-type]
                      text_field=field)
    texts = [(p, text_in(p.payload, (field,))) for p in points if p.vector is not None]
    usable = [(p, text) for p, text in texts if text]
    if not usable:
        raise RuleError("text_field", f"no sampled point of {request.collection} holds text "
                                      f"under {field!r} (payload keys: {keys})")
    model = await ingestor.models.get(version)
    if model.dimensions != info.dimensions:
        raise RuleError("model", f"{request.model} makes {model.dimensions} numbers; "
                                 f"{request.collection} holds {info.dimensions}")
    fresh = await encode(model, [" ".join(text.split()) for _, text in usable])
    stored = np.asarray([p.vector for p, _ in usable], dtype=np.float32)
    cosines = (np.sum(stored * fresh, axis=1) /
               (np.linalg.norm(stored, axis=1) * np.linalg.norm(fresh, axis=1)))
    median, lowest = float(statistics.median(cosines)), float(np.min(cosines))
    report = Adoption(alias=alias, collection=request.collection, vector=request.vector,
                      model=request.model, dimensions=info.dimensions, metric=info.metric,
                      points=info.points, payload_keys=keys, text_field=field,
                      sampled=len(usable), median_cosine=round(median, 6),
                      min_cosine=round(lowest, 6), adopted=median >= MIN_MEDIAN_COSINE,
                      carried=[f"{name!r} ({'sparse' if c.sparse else 'dense'})"
                               for name, c in _others(info, request.vector).items()])
    if not report.adopted:
        raise RuleError("model", f"{request.collection}'s vectors were not made by "
                                 f"{request.model}: re-encoding {len(usable)} of their texts "
                                 f"gives a median cosine of {median:.4f} (needs "
                                 f">= {MIN_MEDIAN_COSINE}); name the model that made them")
    rollout = check_rollout(Rollout(alias=alias, versions=(version,), stable="v1",
                                    candidate=None, vector=request.vector,
                                    carried=_others(info, request.vector)))
    created = await ingestor.rules.create(
        rollout, actor, f"adopted collection {request.collection} ({request.model}, median "
                        f"cosine {median:.4f} on {len(usable)} points)")
    await ingestor.accounting.update(created)
    return msgspec.structs.replace(report, revision=created.revision)


def _others(info: CollectionInfo, vector: str) -> dict[str, Carried]:
    """The collection's vectors besides the adopted one: what the rule carries."""
    config = info.config
    if config is None:
        return {}
    return {**{name: Carried(sparse=False, size=size, metric=metric)  # type: ignore[arg-type]
               for name, (size, metric) in config.dense.items() if name != vector},
            **{name: Carried(modifier=modifier)  # type: ignore[arg-type]
               for name, modifier in config.sparse.items()}}


def _text_field(points: list[Any]) -> str:
    """The first of the usual text keys that most sampled points hold text under."""
    for key in TEXT_FIELDS:
        holding = sum(1 for p in points if text_in(p.payload, (key,)))
        if points and holding >= 0.9 * len(points):
            return key
    raise RuleError("text_field", "no payload key holds the points' text (looked for "
                                  f"{', '.join(TEXT_FIELDS)}): name it with --text-field")
