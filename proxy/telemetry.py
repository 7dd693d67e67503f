"""Telemetry in one place: attribute names, tracing, metrics and logging setup.

Every span, metric label and log line about a query uses the names in ``Attr``: OpenTelemetry's
``feature_flag.*`` conventions for the rollout decision (the alias is the flag, the model version
its variant) and ``db.*`` for the vector search, plus ``embedshift.*`` for what has no convention.
Traces go to an OTLP/HTTP collector when the standard ``OTEL_EXPORTER_OTLP_*`` variables say where;
metrics are Prometheus, on a registry of the app's own.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Mapping
from enum import StrEnum

import structlog
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class Attr(StrEnum):
    ALIAS = "feature_flag.key"
    VERSION = "feature_flag.result.variant"
    REASON = "feature_flag.result.reason"
    PROVIDER = "feature_flag.provider.name"
    RULE_REVISION = "feature_flag.version"
    BUCKET = "embedshift.bucket"
    EFFECTIVE_PERCENT = "embedshift.effective_percent"
    MODEL_ID = "embedshift.model.id"
    CACHE_HIT = "embedshift.encode.cache_hit"
    HIT_COUNT = "embedshift.search.hits"
    FALLBACK_FROM = "embedshift.fallback.from"
    DB_SYSTEM = "db.system.name"
    DB_COLLECTION = "db.collection.name"
    DB_OPERATION = "db.operation.name"


def tracer_provider(environ: Mapping[str, str], extra: SpanProcessor | None = None
                    ) -> TracerProvider:
    """A provider exporting by OTLP/HTTP when an endpoint is configured (the exporter reads the
    standard OTEL_EXPORTER_OTLP_* variables itself), plus ``extra`` (tests use an in-memory one)."""
    service = environ.get("OTEL_SERVICE_NAME", "embedshift")
    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    if environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or \
            environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    if extra is not None:
        provider.add_span_processor(extra)
    return provider


_LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128, 0.256, 0.512,
                    1.0, 2.0)


class Metrics:
    """The proxy's Prometheus metrics, labelled by alias and model version."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("embedshift_requests", "Search requests answered",
                                ["alias", "version", "reason"], registry=r)
        self.errors = Counter("embedshift_errors", "Search requests or stages that failed",
                              ["alias", "version", "kind"], registry=r)
        self.fallbacks = Counter("embedshift_fallbacks", "Candidate failures answered by stable",
                                 ["alias", "version"], registry=r)
        self.latency = Histogram("embedshift_request_seconds", "Search latency, whole request",
                                 ["alias", "version"], buckets=_LATENCY_BUCKETS, registry=r)
        self.encode_latency = Histogram("embedshift_encode_seconds", "Query encoding latency",
                                        ["alias", "version"], buckets=_LATENCY_BUCKETS,
                                        registry=r)
        self.search_latency = Histogram("embedshift_search_seconds", "Vector search latency",
                                        ["alias", "version"], buckets=_LATENCY_BUCKETS,
                                        registry=r)
        self.cache = Counter("embedshift_encode_cache", "Query cache lookups",
                             ["alias", "version", "result"], registry=r)
        self.effective_percent = Gauge("embedshift_effective_percent",
                                       "Share of users on the candidate", ["alias"], registry=r)
        self.coverage = Gauge("embedshift_backfill_coverage", "Fraction of the corpus encoded",
                              ["alias", "version"], registry=r)
        self.rules_connected = Gauge("embedshift_rules_store_up",
                                     "1 when the rules store answered the last read", registry=r)
        self.rules_age = Gauge("embedshift_rules_age_seconds",
                               "Seconds since rules were last read in full", registry=r)


def configure_logging(json: bool = True, level: int = logging.INFO) -> None:
    """structlog to stderr: JSON lines for machines, aligned key=value for a terminal."""
    renderer: structlog.typing.Processor = structlog.processors.JSONRenderer()
    if not json:
        renderer = structlog.dev.ConsoleRenderer(colors=False)
    structlog.configure(
        processors=[structlog.processors.add_log_level,
                    structlog.processors.TimeStamper(fmt="iso", utc=True),
                    renderer],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
