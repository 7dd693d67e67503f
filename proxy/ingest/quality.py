"""The golden-set judgement ``promote`` asks for: nDCG@10 of stable and candidate, each searched
through its real collection with its own encoder (not an in-memory re-encode), so what is judged
is what users would get, backfill gaps and all.

The golden set is BEIR's queries and qrels; qrels name the user's document ids. A judgement
passes when the candidate's nDCG@10 is at most the rule's ``promotion.max_ndcg_drop`` below
stable's; it is kept with the rule revision it judged.
"""

from __future__ import annotations

from collections.abc import Mapping

import msgspec

from proxy.ingest.writer import Ingestor, encode
from proxy.models.evaluation import ndcg
from proxy.state.base import now
from rollout_rules.errors import RuleError
from rollout_rules.model import Rollout, Version
from rollout_rules.promotion import quality_passes

K = 10


class Judgement(msgspec.Struct, frozen=True, kw_only=True):
    alias: str
    revision: int
    stable: str
    candidate: str
    queries: int
    stable_ndcg_at_10: float
    candidate_ndcg_at_10: float
    max_ndcg_drop: float
    passed: bool
    at: str
    stable_precision_at_5: float | None = None  # None in a judgement kept by an older release
    candidate_precision_at_5: float | None = None


async def ndcg_through(ingestor: Ingestor, version: Version, queries: Mapping[str, str],
                       qrels: Mapping[str, Mapping[str, int]]) -> tuple[float, float]:
    """Mean nDCG@10 and precision@5 of ``version`` searched in its collection (0 when it has
    none yet)."""
    if await ingestor.store.describe(version.target) is None:
        return 0.0, 0.0
    model = await ingestor.models.get(version)
    ids = list(queries)
    vectors = await encode(model, [version.query_prefix + queries[q] for q in ids])
    total = hits_at_5 = 0.0
    for query_id, vector in zip(ids, vectors, strict=True):
        hits = await ingestor.store.search(version.target, vector, K, None, False)
        ranking = [str(h.id) for h in hits]  # the documents' own ids, as the qrels name them
        judged = qrels.get(query_id, {})
        total += ndcg(ranking, judged, K)
        hits_at_5 += sum(1 for doc in ranking[:5] if judged.get(doc, 0) > 0) / 5
    return total / len(ids), hits_at_5 / len(ids)


async def judge(ingestor: Ingestor, rollout: Rollout, queries: Mapping[str, str],
                qrels: Mapping[str, Mapping[str, int]]) -> Judgement:
    if rollout.candidate is None:
        raise RuleError("candidate", f"{rollout.alias} has no candidate to judge")
    judged = {q: text for q, text in queries.items() if qrels.get(q)}
    if not judged:
        raise RuleError("qrels", "no query has a judged document")
    stable, candidate = rollout.version(rollout.stable), rollout.version(rollout.candidate)
    before, stable_p5 = await ndcg_through(ingestor, stable, judged, qrels)
    after, candidate_p5 = await ndcg_through(ingestor, candidate, judged, qrels)
    margin = rollout.promotion.max_ndcg_drop
    return Judgement(alias=rollout.alias, revision=rollout.revision, stable=stable.name,
                     candidate=candidate.name, queries=len(judged),
                     stable_ndcg_at_10=round(before, 4), candidate_ndcg_at_10=round(after, 4),
                     max_ndcg_drop=margin, passed=quality_passes(before, after, margin),
                     at=now(), stable_precision_at_5=round(stable_p5, 4),
                     candidate_precision_at_5=round(candidate_p5, 4))
