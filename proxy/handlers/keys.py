"""Typed application keys: what handlers find on ``request.app``."""

from __future__ import annotations

from aiohttp import web
from opentelemetry.trace import Tracer

from proxy.config import Settings
from proxy.operator import Operator
from proxy.rules import RuleWatcher
from proxy.search import Searcher
from proxy.telemetry import Metrics

SETTINGS = web.AppKey("settings", Settings)
SEARCHER = web.AppKey("searcher", Searcher)
WATCHER = web.AppKey("watcher", RuleWatcher)
OPERATOR = web.AppKey("operator", Operator)
METRICS = web.AppKey("metrics", Metrics)
TRACER = web.AppKey("tracer", Tracer)
READY = web.AppKey("ready", dict)
