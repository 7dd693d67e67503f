"""The aiohttp application: routes, middlewares, and the start-up that loads what it serves.

``Deps`` are the parts a proxy runs on (rule store, vector store, tracer provider, model cache);
``make_app`` wires them in. On start-up the app reads the rules, loads one encoder per distinct
model of every declared version, and checks each version against its collection (dimensions,
distance, model id): a mismatch refuses to start, naming both sides, and stops everything start-up
had begun (rule watcher, encoder pool). Encoders for versions declared later are loaded in the
background when the rule arrives.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import structlog
from aiohttp import web
from opentelemetry.sdk.trace import TracerProvider

from proxy.config import Settings
from proxy.control.operator import Operator
from proxy.models.encoders import default_threads
from proxy.models.loader import Encoders, ModelCache
from proxy.serving.resultcache import ResultCache
from proxy.serving.search import Searcher
from proxy.state.base import RuleStore
from proxy.state.watcher import RuleWatcher
from proxy.telemetry import Metrics
from proxy.vectors.base import VectorStore, mismatches
from proxy.web.auth import require_admin_token
from proxy.web.errors import boundary, expect_continue
from proxy.web.keys import (
    METRICS,
    OPENAPI,
    OPERATOR,
    READY,
    SEARCHER,
    SETTINGS,
    TRACER,
    WATCHER,
)
from proxy.web.openapi import document
from proxy.web.routes import ROUTES, UNMATCHED, no_route
from rollout_rules.errors import ModelError
from rollout_rules.model import Rollout

log = structlog.get_logger("embedshift.app")
MAX_BODY_BYTES = 64 * 1024


@dataclass
class Deps:
    rules_store: RuleStore
    vector_store: VectorStore
    tracer_provider: TracerProvider
    models: ModelCache


def make_app(settings: Settings, deps: Deps) -> web.Application:
    app = web.Application(middlewares=[boundary, require_admin_token],
                          client_max_size=MAX_BODY_BYTES)
    metrics = Metrics()
    executor = ThreadPoolExecutor(max_workers=default_threads(), thread_name_prefix="encode")
    encoders = Encoders(deps.models, executor, settings.cache_size)
    watcher = RuleWatcher(deps.rules_store, settings.refresh_interval_s)
    tracer = deps.tracer_provider.get_tracer("embedshift")
    app[SETTINGS], app[METRICS], app[WATCHER], app[TRACER] = settings, metrics, watcher, tracer
    results = ResultCache(settings.result_cache_size, settings.result_cache_ttl_s)
    app[SEARCHER] = Searcher(watcher, encoders.by_key, store=deps.vector_store, metrics=metrics,
                             tracer=tracer, results=results,
                             deadline_s=settings.request_timeout_s,
                             log_queries=settings.log_queries)
    app[OPERATOR] = Operator(deps.rules_store, "admin-api")
    app[READY] = {}
    app[OPENAPI] = document(ROUTES)
    for route in ROUTES:
        app.router.add_route(route.method, route.path, route.handler,
                             expect_handler=expect_continue)
    app.router.add_route("*", UNMATCHED, no_route, expect_handler=expect_continue)

    async def stop() -> None:
        await watcher.stop()
        await encoders.close()
        executor.shutdown(wait=False, cancel_futures=True)

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        watcher.on_change = lambda _alias, _before, after: encoders.schedule(after)
        try:
            await watcher.start()
            for rollout in watcher.rollouts.values():
                await encoders.load(rollout)
                await check_collections(rollout, deps.vector_store)
        except BaseException:
            await stop()  # nothing start-up began may outlive a start that failed
            raise
        app[READY]["started"] = True
        yield
        await stop()
        await asyncio.to_thread(deps.tracer_provider.force_flush)  # never block the loop

    app.cleanup_ctx.append(lifecycle)
    return app


async def check_collections(rollout: Rollout, store: VectorStore) -> None:
    """Refuse to serve a version whose collection was encoded differently."""
    for version in rollout.versions:
        info = await store.describe(version.target)
        if info is None:
            log.warning("collection_missing", alias=rollout.alias, version=version.name,
                        collection=version.target.collection)
            continue
        problems = mismatches(version, info)
        if problems:
            raise ModelError(f"{rollout.alias}: version {version.name} does not match its "
                             f"collection: {'; '.join(problems)}")
