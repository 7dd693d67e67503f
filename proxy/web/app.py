"""The aiohttp application: routes, middlewares, and the start-up that loads what it serves.

``Deps`` are the parts a proxy runs on (rule store, vector store, tracer provider, model cache);
``make_app`` wires them in. On start-up the app reads the rules, loads one encoder per distinct
model of every declared version, and checks each version against its collection (dimensions,
distance, model id). A version that cannot load or does not match its collection is unavailable,
named in /readyz with the reason: its alias alone is affected (the candidate's queries go to
stable, stable's get a 503), never the other aliases. Rules that arrive later are prepared the same
way in the background. A start-up that fails for any other reason stops everything it had begun
(rule watcher, encoder pool).
"""

from __future__ import annotations

import asyncio
import os
import socket
import uuid
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from aiohttp import web
from opentelemetry.sdk.trace import TracerProvider

from proxy.config import Settings
from proxy.control.alerts import AlertHandler
from proxy.control.drift import DriftWatch
from proxy.control.guard import GuardLoop
from proxy.control.operator import Operator
from proxy.control.ramp import RampScheduler
from proxy.ingest.backfill import Backfill, QueueFactory
from proxy.ingest.writer import Ingestor
from proxy.models.encoders import default_threads
from proxy.models.loader import Encoders, ModelCache
from proxy.online.feedback import FeedbackDesk
from proxy.online.recorder import AnswerRecorder
from proxy.serving.cohorts import CohortRecorder
from proxy.serving.embed import Embedder
from proxy.serving.popularity import HitRecorder
from proxy.serving.readiness import Lifecycle, Versions, close_when_draining
from proxy.serving.resultcache import ResultCache
from proxy.serving.search import Searcher
from proxy.serving.shadow import Shadow
from proxy.state.answers import AnswerLog, MemoryAnswerLog
from proxy.state.base import RuleStore
from proxy.state.handed import HandedOut, MemoryHandedOut
from proxy.state.jobs import BackfillQueue
from proxy.state.watcher import RuleWatcher
from proxy.telemetry import Metrics
from proxy.vectors.base import VectorStore
from proxy.web.auth import admin_only
from proxy.web.bodies import MAX_DOCUMENTS_BYTES
from proxy.web.errors import UNMATCHED, boundary, expect_continue
from proxy.web.history import History
from proxy.web.keys import (
    ALERTS,
    BACKFILL,
    DRIFT,
    EMBEDDER,
    FEEDBACK,
    GUARD,
    HISTORY,
    INGESTOR,
    METRICS,
    OPENAPI,
    OPERATOR,
    READY,
    SEARCHER,
    SETTINGS,
    TRACER,
    VERSIONS,
    WATCHER,
)
from proxy.web.openapi import document
from proxy.web.routes import ROUTES, UNMATCHED_PATH, no_route
from rollout_rules.errors import FeatureOff
from rollout_rules.model import Rollout


@dataclass
class Deps:
    rules_store: RuleStore
    vector_store: VectorStore
    tracer_provider: TracerProvider
    models: ModelCache
    jobs: QueueFactory | None = None  # the backfill's work queue (Redis); None: no backfill
    handed: HandedOut | None = None  # vectors handed out, shared (Redis); None: this process's
    answers: AnswerLog | None = None  # answers kept for feedback, shared (Redis); None: ditto


def make_app(settings: Settings, deps: Deps) -> web.Application:
    app = web.Application(middlewares=[boundary],
                          client_max_size=MAX_DOCUMENTS_BYTES)
    metrics = Metrics()
    executor = ThreadPoolExecutor(max_workers=default_threads(), thread_name_prefix="encode")
    encoders = Encoders(deps.models, executor, settings.cache_size)
    watcher = RuleWatcher(deps.rules_store, settings.refresh_interval_s)
    tracer = deps.tracer_provider.get_tracer("embedshift")
    app[SETTINGS], app[METRICS], app[WATCHER], app[TRACER], app[READY] = (
        settings, metrics, watcher, tracer, Lifecycle())
    app.on_response_prepare.append(close_when_draining(app[READY]))
    recorder = HitRecorder(deps.rules_store, settings.popularity_sample)
    shadow = Shadow(metrics, settings.shadow_concurrency)
    answer_log = deps.answers or MemoryAnswerLog(settings.feedback_answers_max)
    remembered = AnswerRecorder(answer_log, settings.feedback_ttl_s,
                                requery_s=settings.requery_s)
    app[FEEDBACK] = FeedbackDesk(answer_log, metrics, ttl_s=settings.feedback_ttl_s,
                                 per_user=settings.feedback_per_user,
                                 declared=[e for e in settings.feedback_events.split(",") if e],
                                 recent=remembered.recent)
    searcher = app[SEARCHER] = Searcher(
        watcher, encoders.by_key, store=deps.vector_store, metrics=metrics, tracer=tracer,
        results=ResultCache(settings.result_cache_size, settings.result_cache_ttl_s),
        deadline_s=settings.request_timeout_s, log_queries=settings.log_queries,
        popularity=recorder, cohorts=CohortRecorder(), shadow=shadow,
        answers=remembered if settings.feedback_ttl_s > 0 else None)
    versions = app[VERSIONS] = Versions(encoders, deps.vector_store, searcher)
    app[EMBEDDER] = Embedder(searcher, deps.handed or MemoryHandedOut(settings.handed_out_max),
                             settings.handed_out_ttl_s, settings.embeddings_per_minute)
    guard, backfill, drift = _add_operations(app, settings, deps, watcher,
                                             cohorts=searcher.cohorts, answers=answer_log)
    _add_routes(app, History(metrics.registry, settings.ui_step_s))

    async def stop() -> None:
        for close in (drift.stop, guard.stop, shadow.close, backfill.close, recorder.stop,
                      remembered.stop, watcher.stop, encoders.close, deps.models.aclose):
            await close()  # in this order: what writes first, what it writes with last
        executor.shutdown(wait=False, cancel_futures=True)

    def on_change(alias: str, _before: Rollout | None, after: Rollout | None) -> None:
        if after is None:
            versions.forget(alias)
        else:
            encoders.schedule(versions.prepare(after))

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        watcher.on_change = on_change
        try:
            await watcher.start()
            for rollout in watcher.rollouts.values():
                await versions.prepare(rollout)
        except BaseException:
            await stop()  # nothing start-up began may outlive a start that failed
            raise
        recorder.start()
        if settings.feedback_ttl_s > 0:
            remembered.start()
        guard.start()
        drift.start()
        app[READY].started = True
        yield
        await stop()
        await asyncio.to_thread(deps.tracer_provider.force_flush)  # never block the loop

    app.cleanup_ctx.append(lifecycle)
    return app


def _add_operations(app: web.Application, settings: Settings, deps: Deps,
                    watcher: RuleWatcher, *, cohorts: CohortRecorder, answers: AnswerLog
                    ) -> tuple[GuardLoop, Backfill, DriftWatch]:
    """What writes rules and data beside the operator: ingestion and the backfill, the alert
    webhook, this instance's guard loop (and the guarded ramp it drives), the served models'
    drift watch."""
    store = deps.rules_store
    app[OPERATOR] = Operator(store, "admin-api", answers=answers)
    ingestor = app[INGESTOR] = Ingestor(deps.vector_store, store, deps.models)
    backfill = app[BACKFILL] = Backfill(ingestor, deps.jobs or _no_jobs,
                                        f"{settings.host}:{settings.port}")
    app[ALERTS] = AlertHandler(store, settings.alert_alias_label)
    instance = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
    guard = app[GUARD] = GuardLoop(store, lambda: watcher.rollouts, cohorts.window,
                                   app[METRICS], instance=instance,
                                   tick_s=settings.guard_tick_s,
                                   ramp=RampScheduler(store, instance, settings.guard_tick_s,
                                                      answers=answers),
                                   answers=answers)
    drift = app[DRIFT] = DriftWatch(deps.models.served, lambda: watcher.rollouts, store,
                                    app[METRICS], interval_s=settings.drift_check_s,
                                    policy=settings.drift_policy)
    return guard, backfill, drift


def _add_status_history(app: web.Application, history: History) -> None:
    """The status page's per-version figures, sampled once the app has started (after every
    start-up context, so a start that fails never leaves the sampler running)."""
    app[HISTORY] = history

    async def start(_app: web.Application) -> None:
        history.start()

    async def stop(_app: web.Application) -> None:
        await history.stop()

    app.on_startup.append(start)
    app.on_cleanup.append(stop)


def _add_routes(app: web.Application, history: History) -> None:
    """Every route, and the status page's history they serve."""
    _add_status_history(app, history)
    app[OPENAPI] = document(ROUTES)
    for route in ROUTES:
        handler = admin_only(route.handler) if route.admin else route.handler
        app.router.add_route(route.method, route.path, handler, expect_handler=expect_continue)
    app.router.add_route("*", UNMATCHED_PATH, no_route, name=UNMATCHED,
                         expect_handler=expect_continue)


def _no_jobs(alias: str, version: str) -> BackfillQueue:
    raise FeatureOff("the backfill needs the Redis rule store (its work queue lives there)")
