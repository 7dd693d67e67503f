"""The request path's metric updates wait off the answer path and every reader sees them all."""

from __future__ import annotations

from prometheus_client import generate_latest

from proxy.telemetry import Metrics


def test_pending_updates_are_applied_whenever_the_registry_is_read() -> None:
    metrics = Metrics()
    metrics.count(metrics.requests, "p", "v1", "bucket_in")
    metrics.count(metrics.requests, "p", "v1", "bucket_in")
    metrics.observe(metrics.latency, 0.003, "p", "v1")
    metrics.gauge(metrics.effective_percent, 10.0, "p")
    metrics.gauge(metrics.effective_percent, 25.0, "p")  # the last value set wins
    assert metrics.requests.labels("p", "v1", "bucket_in")._value.get() == 0  # still pending
    read = metrics.registry.get_sample_value
    assert read("embedshift_requests_total", {"alias": "p", "version": "v1",
                                              "reason": "bucket_in"}) == 2
    assert read("embedshift_request_seconds_count", {"alias": "p", "version": "v1"}) == 1
    assert read("embedshift_effective_percent", {"alias": "p"}) == 25
    metrics.count(metrics.requests, "p", "v1", "bucket_in")
    assert b'embedshift_requests_total{alias="p",reason="bucket_in",version="v1"} 3.0' in \
        generate_latest(metrics.registry)


def test_observations_never_pile_up_unread() -> None:
    metrics = Metrics()
    for _ in range(Metrics.PENDING_LIMIT + 5):
        metrics.observe(metrics.search_latency, 0.001, "p", "v1")
    histogram = metrics.search_latency.labels("p", "v1")
    assert histogram._sum.get() > 0 and len(metrics._observed) == 5  # flushed at the limit
