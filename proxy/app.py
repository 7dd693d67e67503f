"""The aiohttp application: routes, middlewares, and the start-up that loads what it serves.

``Deps`` are the parts a proxy runs on (rules store, vector store, tracer provider); ``make_app``
wires them in. On start-up the app reads the rules, loads one encoder per distinct model of every
declared version, and checks each version against its collection (dimensions, distance, model id):
a mismatch refuses to start, naming both sides. Encoders for versions declared later are loaded
in the background when the rule arrives.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import structlog
from aiohttp import web
from opentelemetry.sdk.trace import TracerProvider

from proxy.config import Settings
from proxy.encoders import Encoder, OnnxModel, QueryEncoder, default_threads
from proxy.handlers import admin, health
from proxy.handlers.common import errors_as_json
from proxy.handlers.keys import METRICS, OPERATOR, READY, SEARCHER, SETTINGS, TRACER, WATCHER
from proxy.handlers.search import search
from proxy.models import resolve
from proxy.operator import Operator
from proxy.resultcache import ResultCache
from proxy.rules import RuleWatcher
from proxy.rulestore import RedisRuleStore
from proxy.search import Searcher, encoder_key
from proxy.telemetry import Metrics
from proxy.vectorstore import VectorStore, mismatches
from rollout_rules.errors import ModelError
from rollout_rules.model import Rollout, Version

log = structlog.get_logger("embedshift.app")
MAX_BODY_BYTES = 64 * 1024


@dataclass
class Deps:
    rules_store: RedisRuleStore
    vector_store: VectorStore
    tracer_provider: TracerProvider
    models_dir: Path
    actor: str = "admin-api"
    encoders: dict[tuple[str, str, str], Encoder] = field(default_factory=dict)


def make_app(settings: Settings, deps: Deps) -> web.Application:
    app = web.Application(middlewares=[errors_as_json, admin.require_token],
                          client_max_size=MAX_BODY_BYTES)
    metrics = Metrics()
    executor = ThreadPoolExecutor(max_workers=default_threads(), thread_name_prefix="encode")
    watcher = RuleWatcher(deps.rules_store, settings.refresh_interval_s)
    tracer = deps.tracer_provider.get_tracer("embedshift")
    app[SETTINGS], app[METRICS], app[WATCHER], app[TRACER] = settings, metrics, watcher, tracer
    results = ResultCache(settings.result_cache_size, settings.result_cache_ttl_s)
    app[SEARCHER] = Searcher(watcher, deps.encoders, store=deps.vector_store, metrics=metrics,
                             tracer=tracer, results=results,
                             deadline_s=settings.request_timeout_s,
                             log_queries=settings.log_queries)
    app[OPERATOR] = Operator(deps.rules_store, deps.actor)
    app[READY] = {}
    app.router.add_post("/v1/aliases/{alias}/search", search)
    health.add_routes(app)
    admin.add_routes(app)

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        loader = _EncoderLoader(deps, executor, settings)
        watcher.on_change = lambda _alias, _before, after: loader.schedule(after)
        await watcher.start()
        for rollout in watcher.rollouts.values():
            await loader.load(rollout)
            await check_collections(rollout, deps.vector_store)
        app[READY]["started"] = True
        yield
        await watcher.stop()
        await loader.close()
        executor.shutdown(wait=False, cancel_futures=True)
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


class _EncoderLoader:
    """Loads encoders for new versions off the event loop, one model at a time."""

    def __init__(self, deps: Deps, executor: ThreadPoolExecutor, settings: Settings) -> None:
        self.deps, self.executor, self.settings = deps, executor, settings
        self._tasks: set[asyncio.Task[None]] = set()
        self._lock = asyncio.Lock()

    async def load(self, rollout: Rollout) -> None:
        async with self._lock:
            for version in rollout.versions:
                if encoder_key(version) not in self.deps.encoders:
                    self.deps.encoders[encoder_key(version)] = await self._encoder(version)

    def schedule(self, rollout: Rollout | None) -> None:
        if rollout is not None:
            task = asyncio.create_task(self._load_logged(rollout))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _load_logged(self, rollout: Rollout) -> None:
        try:
            await self.load(rollout)
        except ModelError as exc:
            log.error("model_load_failed", alias=rollout.alias, error=str(exc))

    async def _encoder(self, version: Version) -> Encoder:
        folder = await asyncio.to_thread(resolve, version, self.deps.models_dir)
        model = await asyncio.to_thread(OnnxModel, folder, 1)
        if model.dimensions != version.dimensions:
            raise ModelError(f"version {version.name} declares {version.dimensions} dimensions, "
                             f"its model {folder.name} produces {model.dimensions}")
        log.info("encoder_loaded", version=version.name, model=version.model, folder=str(folder))
        return QueryEncoder(model, self.executor, query_prefix=version.query_prefix,
                            cache_size=self.settings.cache_size)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
