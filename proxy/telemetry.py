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
from collections.abc import Mapping, MutableMapping
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, TypeVar, cast
from urllib.parse import unquote

import msgspec
import structlog
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_OFF,
    ALWAYS_ON,
    ParentBased,
    Sampler,
    TraceIdRatioBased,
)
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from rollout_rules.errors import RuleError

M = TypeVar("M", Counter, Gauge, Histogram)


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
    RESULT_CACHE_HIT = "embedshift.result_cache.hit"
    HIT_COUNT = "embedshift.search.hits"
    FALLBACK_FROM = "embedshift.fallback.from"
    DB_SYSTEM = "db.system.name"
    DB_COLLECTION = "db.collection.name"
    DB_OPERATION = "db.operation.name"


def tracer_provider(environ: Mapping[str, str], extra: SpanProcessor | None = None
                    ) -> TracerProvider:
    """A provider exporting by OTLP/HTTP when the standard variables name an endpoint, plus
    ``extra`` (tests use an in-memory one). The variables are read from ``environ``, not from
    the process environment, so what configures the proxy is what was passed in."""
    service = environ.get("OTEL_SERVICE_NAME", "embedshift")
    provider = TracerProvider(resource=Resource.create({"service.name": service}),
                              sampler=sampler(environ))
    endpoint = otlp_traces_endpoint(environ)
    if endpoint is not None:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        headers = dict(_pair(item) for item in
                       environ.get("OTEL_EXPORTER_OTLP_HEADERS", "").split(",") if "=" in item)
        exporter = OTLPSpanExporter(endpoint=endpoint, headers=headers)
        provider.add_span_processor(BatchSpanProcessor(exporter))
    if extra is not None:
        provider.add_span_processor(extra)
    return provider


def sampler(environ: Mapping[str, str]) -> Sampler:
    """OTEL_TRACES_SAMPLER / OTEL_TRACES_SAMPLER_ARG, as the specification names them
    (default: parentbased_always_on); an unknown name is an error, not a silent default."""
    name = environ.get("OTEL_TRACES_SAMPLER", "parentbased_always_on")
    try:
        ratio = float(environ.get("OTEL_TRACES_SAMPLER_ARG", "1.0"))
    except ValueError as exc:
        raise RuleError("OTEL_TRACES_SAMPLER_ARG", "must be a number from 0 to 1") from exc
    samplers: dict[str, Sampler] = {
        "always_on": ALWAYS_ON, "always_off": ALWAYS_OFF, "traceidratio": TraceIdRatioBased(ratio),
        "parentbased_always_on": ParentBased(ALWAYS_ON),
        "parentbased_always_off": ParentBased(ALWAYS_OFF),
        "parentbased_traceidratio": ParentBased(TraceIdRatioBased(ratio))}
    if name not in samplers:
        raise RuleError("OTEL_TRACES_SAMPLER", f"{name!r} is not one of {', '.join(samplers)}")
    return samplers[name]


def otlp_traces_endpoint(environ: Mapping[str, str]) -> str | None:
    """Where traces go: the traces endpoint as given, or the base endpoint + /v1/traces."""
    if environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        return environ["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"]
    base = environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
    return f"{base.rstrip('/')}/v1/traces" if base else None


def _pair(item: str) -> tuple[str, str]:
    key, _, value = item.partition("=")
    return unquote(key.strip()), unquote(value.strip())


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
        self.results = Counter("embedshift_result_cache", "Answers looked up among recent ones",
                               ["alias", "version", "result"], registry=r)
        self.effective_percent = Gauge("embedshift_effective_percent",
                                       "Share of users on the candidate", ["alias"], registry=r)
        self.coverage = Gauge("embedshift_backfill_coverage", "Fraction of the corpus encoded",
                              ["alias", "version"], registry=r)
        self.rules_connected = Gauge("embedshift_rules_store_up",
                                     "1 when the rules store answered the last read", registry=r)
        self.rules_age = Gauge("embedshift_rules_age_seconds",
                               "Seconds since rules were last read in full", registry=r)
        self._children: dict[tuple[str, tuple[str, ...]], Any] = {}

    def child(self, metric: M, *labels: str) -> M:
        """``metric.labels(*labels)``, bound once: ``labels()`` takes a lock and checks its
        arguments on every call, and the request path records seven metrics per query."""
        key = (metric._name, labels)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = metric.labels(*labels)
        return cast(M, found)


def configure_logging(json: bool | None = None, level: int = logging.INFO) -> None:
    """structlog to stderr: JSON lines for machines, aligned key=value for a terminal
    (``json=None``: JSON unless stderr is a terminal). The proxy writes one line per query, so
    the JSON path is the lean one: msgspec renders bytes, timestamp included, straight to
    stderr's buffer (3.6 µs a line against 8 µs through structlog's TimeStamper, the standard
    library's json and the text layer)."""
    if json is None:
        json = not sys.stderr.isatty()
    if json:
        encode = msgspec.json.Encoder().encode
        structlog.configure(
            processors=[structlog.processors.add_log_level, _utc_now,
                        structlog.processors.JSONRenderer(serializer=lambda e, **_: encode(e))],
            wrapper_class=structlog.make_filtering_bound_logger(level),
            logger_factory=structlog.BytesLoggerFactory(file=sys.stderr.buffer),
            cache_logger_on_first_use=True)
        return
    structlog.configure(
        processors=[structlog.processors.add_log_level,
                    structlog.processors.TimeStamper(fmt="iso", utc=True),
                    structlog.dev.ConsoleRenderer(colors=False)],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )


def _utc_now(_logger: Any, _method: str, event: MutableMapping[str, Any]
             ) -> MutableMapping[str, Any]:
    """An RFC 3339 UTC timestamp that msgspec formats as it renders the line."""
    event["timestamp"] = datetime.now(UTC)
    return event
