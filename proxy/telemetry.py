"""Telemetry in one place: attribute names, tracing, metrics and logging setup.

Span attributes about a query use the names in ``Attr``: OpenTelemetry's ``feature_flag.*``
conventions for the rollout decision (the alias is the flag, the model version its variant),
``db.*`` for the vector search, and ``embedshift.*`` for what has no convention. Metric labels and
log keys are short names instead (``alias``, ``version``, ``reason``; ``model_version`` in the log
line), as Prometheus and log readers expect. Traces go to an OTLP/HTTP collector when the standard
``OTEL_EXPORTER_OTLP_*`` variables name an endpoint, configured by the SDK itself (headers,
timeouts, compression, resource attributes, sampler); with none, no span is recorded (trace ids
are still made, for answers and log lines). Metrics are Prometheus, on a registry of the app's
own.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterator, Mapping, MutableMapping
from contextlib import contextmanager
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, TypeVar, cast

import msgspec
import structlog
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF
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


# The samplers the specification names (OTEL_TRACES_SAMPLER); the SDK would warn and fall back
# to the default for any other name, we refuse it.
SAMPLERS = ("always_on", "always_off", "traceidratio", "parentbased_always_on",
            "parentbased_always_off", "parentbased_traceidratio")


def tracer_provider(environ: Mapping[str, str], extra: SpanProcessor | None = None
                    ) -> TracerProvider:
    """A provider configured by the ``OTEL_*`` variables of ``environ`` (the mapping passed in,
    not the process environment), exporting by OTLP/HTTP when they name an endpoint, plus
    ``extra`` (tests use an in-memory one). With neither, spans are not recorded at all, whatever
    the sampler: nothing would read them."""
    check_sampler(environ)
    with sdk_environment(environ):
        resource = Resource.create()
        if str(resource.attributes.get("service.name", "")).startswith("unknown_service"):
            resource = resource.merge(Resource({"service.name": "embedshift"}))
        exporting = bool(environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
                         or environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"))
        # Nothing would receive a recorded span: record none (a span still gets its trace id,
        # which answers and log lines carry). See loadtest.bench_proxy for what recording costs.
        unread = not exporting and extra is None
        provider = TracerProvider(resource=resource, sampler=ALWAYS_OFF if unread else None)
        if exporting:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    if extra is not None:
        provider.add_span_processor(extra)
    return provider


@contextmanager
def sdk_environment(environ: Mapping[str, str]) -> Iterator[None]:
    """The SDK reads its variables from ``os.environ`` as its objects are built (exporter,
    processor, resource, sampler, limits), never afterwards. While they are built here, the
    process's ``OTEL_*`` variables are exactly those of ``environ``; they are restored after."""
    saved = {key: value for key, value in os.environ.items() if key.startswith("OTEL_")}
    try:
        for key in saved:
            del os.environ[key]
        os.environ.update({k: v for k, v in environ.items() if k.startswith("OTEL_")})
        yield
    finally:
        for key in [k for k in os.environ if k.startswith("OTEL_")]:
            del os.environ[key]
        os.environ.update(saved)


def check_sampler(environ: Mapping[str, str]) -> None:
    """OTEL_TRACES_SAMPLER / _ARG as the specification names them; a name or ratio the SDK
    would silently replace by its default is an error instead."""
    name = environ.get("OTEL_TRACES_SAMPLER", "parentbased_always_on")
    if name not in SAMPLERS:
        raise RuleError("OTEL_TRACES_SAMPLER", f"{name!r} is not one of {', '.join(SAMPLERS)}")
    raw = environ.get("OTEL_TRACES_SAMPLER_ARG")
    if raw is not None and name.endswith("traceidratio"):
        try:
            ratio = float(raw)
        except ValueError:
            ratio = -1.0
        if not 0.0 <= ratio <= 1.0:
            raise RuleError("OTEL_TRACES_SAMPLER_ARG", f"{raw!r}: must be a number from 0 to 1")


_SHARE_BUCKETS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
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
        self.revision = Gauge("embedshift_rule_revision", "The revision of each alias's rule "
                              "this proxy serves (a change is a rule change: annotate it)",
                              ["alias"], registry=r)
        self.set_percent = Gauge("embedshift_rollout_percent", "The candidate's share the "
                                 "operator set (before the coverage cap)", ["alias"], registry=r)
        self.state = Gauge("embedshift_rollout_state", "1 for the state each alias's rollout is "
                           "in, 0 for the others", ["alias", "state"], registry=r)
        self.rules_connected = Gauge("embedshift_rules_store_up",
                                     "1 when the rules store answered the last read", registry=r)
        self.vanished = Gauge("embedshift_rules_vanished",
                              "1 while an alias is served from memory after the rule store lost "
                              "it", ["alias"], registry=r)
        self.rules_age = Gauge("embedshift_rules_age_seconds",
                               "Seconds since rules were last read in full", registry=r)
        self.shadows = Counter("embedshift_shadow", "Shadow searches by outcome (compared, "
                               "timed, failed, dropped)", ["alias", "version", "result"],
                               registry=r)
        self.shadow_overlap = Histogram("embedshift_shadow_overlap",
                                        "Overlap@10 of stable's answer and the shadowed "
                                        "version's", ["alias", "version"],
                                        buckets=_SHARE_BUCKETS, registry=r)
        self.shadow_rank_correlation = Histogram(
            "embedshift_shadow_rank_correlation", "Spearman's rho of the ids both answers share",
            ["alias", "version"], buckets=(-0.5, 0.0, 0.5, 0.8, 0.9, 1.0), registry=r)
        self.shadow_latency = Histogram("embedshift_shadow_seconds",
                                        "A shadow search, whole (encode and search)",
                                        ["alias", "version"], buckets=_LATENCY_BUCKETS,
                                        registry=r)
        self.guard_state = Gauge("embedshift_guard_verdict",
                                 "The guard's last verdict per alias: 1 healthy, 0 no verdict, "
                                 "-1 breach", ["alias"], registry=r)
        self.guard_rollbacks = Counter("embedshift_guard_rollbacks",
                                       "Rollbacks this proxy made: by its guard or an alert",
                                       ["alias", "by"], registry=r)
        self.model_drifted = Gauge("embedshift_model_drifted",
                                   "1 when a served model's probe texts no longer get the "
                                   "vectors it was catalogued with", ["model"], registry=r)
        self.model_probe_cosine = Gauge("embedshift_model_probe_cosine",
                                        "The least cosine of a served model's probe vectors "
                                        "now against its catalogued ones", ["model"], registry=r)
        self.served_calls = Gauge("embedshift_served_calls",
                                  "Calls to a served model's API so far, by outcome (ok, "
                                  "retried, failed, rate_limited)", ["model", "outcome"],
                                  registry=r)
        self.served_tokens = Gauge("embedshift_served_tokens",
                                   "Tokens a served model's API counted so far (its usage)",
                                   ["model"], registry=r)
        self.served_circuit = Gauge("embedshift_served_circuit_open",
                                    "1 while calls to a served model fail fast after failures "
                                    "in a row", ["model"], registry=r)
        self.handed_dropped = Counter("embedshift_handed_out_dropped",
                                      "Fingerprints of handed-out vectors dropped, the oldest "
                                      "first, to keep within handed_out_max", ["alias"],
                                      registry=r)
        self.http_requests = Counter("embedshift_http_requests",
                                     "HTTP answers by route, method and status (every route, "
                                     "errors included)", ["route", "method", "status"],
                                     registry=r)
        self.feedback = Counter("embedshift_feedback_events",
                                "Feedback events by outcome (counted, replayed, repeated, "
                                "capped, unknown_trace, refused)", ["alias", "event", "outcome"],
                                registry=r)
        self.online = Gauge("embedshift_online_quality",
                            "Online figures per version from the shared counts (answers, "
                            "click_through, mrr, conversions, thumbs_up, requery, zero_hits; "
                            "interleaved pairs as version 'TEST~BASELINE' with wins, losses, "
                            "ties, win_share)", ["alias", "version", "figure"], registry=r)
        self._children: dict[tuple[str, tuple[str, ...]], Any] = {}

    def publish_online(self, alias: str, table: dict[str, dict[str, float | None]]) -> None:
        """Online figures per version (``rollout_rules.online.online_table``) as gauges; a
        figure with nothing behind it yet is left out rather than shown as 0."""
        for version, row in table.items():
            for figure, value in row.items():
                if value is not None:
                    self.child(self.online, alias, version, figure).set(value)

    def http(self, route: str, method: str, status: int) -> Counter:
        return self.child(self.http_requests, route, method, str(status))

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
    _stdlib_through_structlog(level)
    if json:
        encode = msgspec.json.Encoder().encode
        structlog.configure(
            processors=[structlog.processors.add_log_level, _utc_now,
                        structlog.processors.format_exc_info,
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


class _ToStructlog(logging.Handler):
    """A library's own log record (aiohttp, redis, OpenTelemetry's exporter) as one structlog
    line, so the log stays one JSON object a line: its traceback, if any, becomes a field."""

    def emit(self, record: logging.LogRecord) -> None:
        fields: dict[str, Any] = {"logger": record.name}
        if record.exc_info and record.exc_info[1] is not None:
            fields["error"] = type(record.exc_info[1]).__name__
            fields["exc_info"] = record.exc_info
        try:
            message = record.getMessage()
        except (TypeError, ValueError):
            message = str(record.msg)
        structlog.get_logger(record.name).log(record.levelno, message, **fields)


def _stdlib_through_structlog(level: int) -> None:
    root = logging.getLogger()
    root.handlers = [h for h in root.handlers if not isinstance(h, _ToStructlog)]
    root.addHandler(_ToStructlog())
    root.setLevel(max(level, logging.WARNING))  # libraries' info and debug stay quiet


def _utc_now(_logger: Any, _method: str, event: MutableMapping[str, Any]
             ) -> MutableMapping[str, Any]:
    """An RFC 3339 UTC timestamp that msgspec formats as it renders the line."""
    event["timestamp"] = datetime.now(UTC)
    return event
