"""A plan's arithmetic: workers scale to the cores and no further, cost follows tokens."""

from __future__ import annotations

import msgspec
from msgspec.structs import replace

from proxy.ingest.backfill import predicted_seconds
from proxy.ingest.plan import ENVELOPE_BYTES, HNSW_LINK_BYTES, Workers, estimate
from proxy.state.jobs import JobStatus


def test_workers_scale_up_to_the_cores_and_cost_follows_the_tokens() -> None:
    figures = estimate(documents=10_000, to_encode=7_200, docs_per_s=2.0, tokens_per_doc=250,
                       text_bytes_per_doc=1000, dimensions=384, cores=2, max_workers=3,
                       price_per_1k=0.02)
    assert figures["tokens"] == 1_800_000
    assert figures["wall_time"] == [Workers(1, 3600.0), Workers(2, 1800.0), Workers(3, 1800.0)]
    assert figures["storage_bytes"] == 10_000 * (384 * 4 + 1000 + ENVELOPE_BYTES +
                                                 HNSW_LINK_BYTES)
    assert figures["cost"] == 36.0
    assert estimate(documents=1, to_encode=1, docs_per_s=1, tokens_per_doc=1,
                    text_bytes_per_doc=1, dimensions=1, cores=1, max_workers=1,
                    price_per_1k=None)["cost"] is None


def test_the_backfill_compares_itself_with_the_plan_at_its_workers_and_size() -> None:
    """A plan recorded as the plan route keeps it (JSON), scaled to the job's documents."""
    plan = msgspec.json.decode(msgspec.json.encode({
        "to_encode": 2000, "wall_time": [Workers(1, 27.0), Workers(2, 14.0)]}))
    job = JobStatus(exists=True, total_docs=1000, workers=2)
    assert predicted_seconds(plan, job) == 7.0
    assert predicted_seconds(plan, replace(job, workers=8)) == 13.5  # not planned: 1 worker
    assert predicted_seconds(None, job) is None


def test_a_served_models_rate_limit_bounds_the_backfill_whatever_the_workers() -> None:
    figures = estimate(documents=10_000, to_encode=9_000, docs_per_s=50.0, tokens_per_doc=100,
                       text_bytes_per_doc=500, dimensions=1536, cores=3, max_workers=4,
                       price_per_1k=0.00002, ceiling_docs_per_s=75.0)
    assert figures["wall_time"] == [Workers(1, 180.0), Workers(2, 120.0), Workers(3, 120.0),
                                    Workers(4, 120.0)]  # 9,000 at 75/s: 2 minutes at best
    assert figures["cost"] == 0.02
