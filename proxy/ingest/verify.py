"""``verify``: does the candidate hold exactly stable's documents, each encoded by its model?

Three checks, all read from the store: the document ids of stable and candidate are compared both
ways; every candidate point's envelope (model, version, dimensions, metric, normalisation) must be
the candidate's own; and a random sample of candidate points is re-encoded from its stored text
with the candidate's model, each stored vector agreeing with the fresh one to cosine >= 0.999,
and its carried vectors (a hybrid collection's sparse one) equal to stable's.
Ids in the report are the documents' own. ``verify`` only reads and reports: the route that runs
it keeps the report in the rule store, where ``promote`` looks for a pass. It reads page by page,
keeping the two sets of ids and nothing else of the points (the sample is drawn as they go by).
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

import msgspec
import numpy as np

from proxy.ingest.documents import DOC_ID_FIELD, PointId, doc_id_of, document_of, point_id
from proxy.ingest.writer import Ingestor, encode
from proxy.state.base import now
from proxy.vectors.base import ENVELOPE, RESERVED, Stored, carried_of, scroll_all
from rollout_rules.errors import RuleError
from rollout_rules.model import Rollout, Version

MIN_COSINE = 0.999
SHOWN = 20  # ids listed per finding; the counts are whole


class Report(msgspec.Struct, frozen=True, kw_only=True):
    alias: str
    stable: str
    candidate: str
    revision: int
    at: str
    stable_documents: int
    candidate_documents: int
    missing: int  # in stable, not in the candidate
    missing_ids: list[Any]
    extra: int  # in the candidate, not in stable
    extra_ids: list[Any]
    envelope_mismatches: int
    envelope_examples: list[str]
    sampled: int
    min_cosine: float | None
    vector_mismatch_ids: list[Any]
    passed: bool
    carried_mismatch_ids: list[Any] = msgspec.field(default_factory=list)
    """Sampled documents whose carried vectors (the rule's ``carried``) differ from stable's."""


def envelope_problems(version: Version, points: list[Stored]) -> Iterator[str]:
    expected = {"model": version.model, "version": version.name,
                "dimensions": version.dimensions, "metric": version.metric,
                "normalized": version.normalized}
    for point in points:
        own = point.payload.get(RESERVED)
        if not isinstance(own, dict):
            yield f"{doc_id_of(point)!r}: no envelope (not written by embedshift)"
            continue
        for field in ENVELOPE:
            if own.get(field) != expected[field]:
                yield (f"{doc_id_of(point)!r}: {field} is {own.get(field)!r}, "
                       f"{version.name} is {expected[field]!r}")


async def verify(ingestor: Ingestor, rollout: Rollout, sample: int = 50,
                 seed: int | None = None) -> Report:
    if rollout.candidate is None:
        raise RuleError("candidate", f"{rollout.alias} has no candidate to verify")
    if not 0 <= sample <= 10_000:
        raise RuleError("sample", "from 0 to 10000 points")
    store = ingestor.store
    stable, candidate = rollout.version(rollout.stable), rollout.version(rollout.candidate)
    stable_ids: set[Any] = set()  # the ids, never the points: 1,000,000 fit in about 100 MB
    if await store.describe(stable.target):
        async for point in scroll_all(store, stable.target, [DOC_ID_FIELD]):
            stable_ids.add(doc_id_of(point))
    candidate_ids: set[Any] = set()
    problems: list[str] = []
    mismatches = 0
    chosen: list[PointId] = []  # a uniform sample, drawn as the points go by (reservoir)
    draw, seen = random.Random(seed), 0
    if await store.describe(candidate.target):
        fields = [f"{RESERVED}.{f}" for f in ("doc_id", *ENVELOPE)]
        async for point in scroll_all(store, candidate.target, fields):
            seen += 1
            candidate_ids.add(doc_id_of(point))
            for problem in envelope_problems(candidate, [point]):
                mismatches += 1
                if len(problems) < SHOWN:
                    problems.append(problem)
            if len(chosen) < sample:
                chosen.append(point.id)
            elif (slot := draw.randrange(seen)) < sample:
                chosen[slot] = point.id
    missing, extra = stable_ids - candidate_ids, candidate_ids - stable_ids
    cosines, bad = await _resample(ingestor, candidate, chosen)
    unequal = await _carried_differ(ingestor, rollout, stable, candidate, chosen)
    passed = not missing and not extra and not mismatches and not bad and not unequal and \
        bool(stable_ids)
    return Report(alias=rollout.alias, stable=stable.name, candidate=candidate.name,
                  revision=rollout.revision, at=now(), stable_documents=len(stable_ids),
                  candidate_documents=len(candidate_ids), missing=len(missing),
                  missing_ids=sorted(missing, key=str)[:SHOWN], extra=len(extra),
                  extra_ids=sorted(extra, key=str)[:SHOWN], envelope_mismatches=mismatches,
                  envelope_examples=problems, sampled=len(cosines),
                  min_cosine=round(min(cosines), 6) if cosines else None,
                  vector_mismatch_ids=bad[:SHOWN], passed=passed,
                  carried_mismatch_ids=unequal[:SHOWN])


async def _carried_differ(ingestor: Ingestor, rollout: Rollout, stable: Version,
                          candidate: Version, ids: list[PointId]) -> list[Any]:
    """The sampled documents whose carried vectors are not stable's, exactly (they are copied,
    never computed)."""
    if not rollout.carried or not ids:
        return []
    store = ingestor.store
    ours = await store.retrieve(candidate.target, ids, vectors=True)
    theirs = {doc_id_of(p): p for p in await store.retrieve(
        stable.target, [point_id(doc_id_of(p), stable) for p in ours], vectors=True)}
    return [doc_id_of(p) for p in ours
            if (source := theirs.get(doc_id_of(p))) is None
            or carried_of(p, rollout.carried) != carried_of(source, rollout.carried)]


async def _resample(ingestor: Ingestor, version: Version, ids: list[PointId]
                    ) -> tuple[list[float], list[Any]]:
    """Cosine of each stored vector with its text re-encoded now; the ids below the bar."""
    if not ids:
        return [], []
    points = await ingestor.store.retrieve(version.target, ids, vectors=True)
    documents = [(p, document_of(p.payload)) for p in points]
    usable = [(p, d) for p, d in documents if d is not None and p.vector is not None]
    if not usable:
        return [], [doc_id_of(p) for p, _ in documents]
    model = await ingestor.models.get(version)
    fresh = await encode(model, [d.text for _, d in usable])
    stored = np.asarray([p.vector for p, _ in usable], dtype=np.float32)
    cosines = (np.sum(stored * fresh, axis=1) /
               (np.linalg.norm(stored, axis=1) * np.linalg.norm(fresh, axis=1)))
    bad = [doc_id_of(p) for (p, _), c in zip(usable, cosines, strict=True) if c < MIN_COSINE]
    bad += [doc_id_of(p) for p, d in documents if d is None or p.vector is None]
    return [float(c) for c in cosines], bad
