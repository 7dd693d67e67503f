"""Typed application keys: what handlers find on ``request.app``."""

from __future__ import annotations

from typing import Any

from aiohttp import web
from opentelemetry.trace import Tracer

from proxy.config import Settings
from proxy.control.alerts import AlertHandler
from proxy.control.drift import DriftWatch
from proxy.control.guard import GuardLoop
from proxy.control.operator import Operator
from proxy.ingest.backfill import Backfill
from proxy.ingest.writer import Ingestor
from proxy.online.feedback import FeedbackDesk
from proxy.serving.embed import Embedder
from proxy.serving.readiness import Lifecycle, Versions
from proxy.serving.search import Searcher
from proxy.state.watcher import RuleWatcher
from proxy.telemetry import Metrics
from proxy.web.history import History

SETTINGS = web.AppKey("settings", Settings)
SEARCHER = web.AppKey("searcher", Searcher)
WATCHER = web.AppKey("watcher", RuleWatcher)
OPERATOR = web.AppKey("operator", Operator)
METRICS = web.AppKey("metrics", Metrics)
TRACER = web.AppKey("tracer", Tracer)
READY = web.AppKey("ready", Lifecycle)
VERSIONS = web.AppKey("versions", Versions)
OPENAPI = web.AppKey("openapi", dict[str, Any])
INGESTOR = web.AppKey("ingestor", Ingestor)
BACKFILL = web.AppKey("backfill", Backfill)
ALERTS = web.AppKey("alerts", AlertHandler)
GUARD = web.AppKey("guard", GuardLoop)
HISTORY = web.AppKey("history", History)
EMBEDDER = web.AppKey("embedder", Embedder)
DRIFT = web.AppKey("drift", DriftWatch)
FEEDBACK = web.AppKey("feedback", FeedbackDesk)
