"""Fixtures for the proxy: one demo-loaded Qdrant engine per session, apps on real HTTP."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import pytest
from aiohttp.test_utils import TestClient, TestServer
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from proxy.cli.demo import load_demo
from proxy.config import Settings
from proxy.ingest.writer import Ingestor
from proxy.models.catalog import default_rollout, resolve
from proxy.models.encoders import OnnxModel
from proxy.models.loader import ModelCache
from proxy.state.answers import RedisAnswerLog
from proxy.state.client import connect
from proxy.state.handed import RedisHandedOut
from proxy.state.memory import MemoryRuleStore
from proxy.state.redis_server import EmbeddedRedis
from proxy.state.rulestore import RedisRuleStore
from proxy.telemetry import tracer_provider
from proxy.vectors.base import VectorStore
from proxy.vectors.edge import EdgeStore
from proxy.web.app import Deps, make_app
from rollout_rules.errors import BackendError
from rollout_rules.model import Experiment, GuardPolicy, Rollout, Target
from tests.conftest import make_server

ADMIN_TOKEN = "test-admin-token"
OVERRIDE_TOKEN = "test-override-token"


@dataclass
class Engine:
    store: EdgeStore
    coverage: dict[str, tuple[int, int]]
    # loaded once a session, by model and quantisation
    models: dict[tuple[str, Literal['none', 'int8']], OnnxModel]

    def model_cache(self, models_dir: Path) -> ModelCache:
        """A cache of this session's loaded models (each proxy gets its own, on its own loop)."""
        return ModelCache(models_dir, load=lambda v: self.models[(v.model, v.quantization)])


@pytest.fixture(scope="session")
def demo_engine(models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engine]:
    store = EdgeStore(tmp_path_factory.mktemp("qdrant"))
    rollout = default_rollout("products")
    models = {(v.model, v.quantization): OnnxModel(resolve(v, models_dir), threads=1)
              for v in rollout.versions}
    cache = ModelCache(models_dir, load=lambda v: models[(v.model, v.quantization)])

    async def load() -> dict[str, tuple[int, int]]:
        await load_demo(rollout, Ingestor(store, MemoryRuleStore(), cache))
        total = await store.count(rollout.version(rollout.stable).target)
        return {v.name: (await store.count(v.target), total) for v in rollout.versions}

    yield Engine(store, asyncio.run(load()), models)
    asyncio.run(store.close())


class FlakyStore:
    """The real engine, with searches in chosen collections made to fail on demand."""

    def __init__(self, inner: VectorStore) -> None:
        self.inner = inner
        self.broken: set[str] = set()
        self.hanging: set[str] = set()
        self.exploding: set[str] = set()  # a bug, not a backend failure: nothing catches it
        self.slow: dict[str, float] = {}  # collection -> seconds added to each search
        self.reversed: set[str] = set()  # answers in the worst order: fast, whole, worse
        self.searches = 0  # searches begun: a test knows one is in flight

    async def search(self, target: Target, *args: Any, **kwargs: Any) -> Any:
        self.searches += 1
        if target.collection in self.broken:
            raise BackendError(f"injected failure in {target.collection}")
        if target.collection in self.hanging:
            await asyncio.sleep(3600)
        if target.collection in self.exploding:
            raise RuntimeError(f"injected bug in {target.collection}")
        if target.collection in self.slow:
            await asyncio.sleep(self.slow[target.collection])
        hits = await self.inner.search(target, *args, **kwargs)
        return hits[::-1] if target.collection in self.reversed else hits

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


@dataclass
class Proxy:
    client: TestClient[Any, Any]
    app: Any
    spans: InMemorySpanExporter
    rules: RedisRuleStore
    store: FlakyStore

    async def search(self, **body: Any) -> Any:
        response = await self.client.post("/v1/aliases/products/search",
                                          json={"query": "warm jacket", **body})
        assert response.status == 200, await response.text()
        return await response.json()


class ProxyFactory:
    def __init__(self, redis_url: str, prefix: str, engine: Engine, models_dir: Path) -> None:
        self.redis_url, self.prefix, self.engine, self.models_dir = (redis_url, prefix, engine,
                                                                       models_dir)
        self.started: list[Proxy] = []

    async def declare(self, percent: float = 0, full_coverage: bool = True,
                      allow_request: bool = False, guard: GuardPolicy | None = None,
                      experiment: Experiment | None = None) -> Rollout:
        rules = RedisRuleStore(connect(Settings(), self.redis_url), self.prefix)
        declared = default_rollout("products")
        if experiment is not None:
            from msgspec.structs import replace
            declared = replace(declared, experiment=experiment)
        if guard is not None:
            from msgspec.structs import replace
            declared = replace(declared, guard=guard)
        if allow_request:
            from msgspec.structs import replace
            declared = replace(declared, overrides=replace(declared.overrides,
                                                           allow_request=True))
        rollout = await rules.create(declared, "tests", "declare")
        for version, (covered, total) in self.engine.coverage.items():
            await rules.set_coverage("products", version, total if full_coverage else covered,
                                     total)
        if percent:
            from msgspec.structs import replace
            rollout = await rules.write(replace(rollout, percent=percent), rollout.revision,
                                        "tests", "ramp")
        await rules.aclose()
        return rollout

    async def rule(self, alias: str = "products") -> Rollout:
        """The alias's rule as the store holds it now."""
        rules = RedisRuleStore(connect(Settings(), self.redis_url), self.prefix)
        try:
            return await rules.get(alias)
        finally:
            await rules.aclose()

    def app(self, refresh_interval_s: float = 3600.0, environ: dict[str, str] | None = None,
            engine: VectorStore | None = None, models: ModelCache | None = None,
            **settings: Any
            ) -> tuple[Any, Settings, RedisRuleStore, InMemorySpanExporter, FlakyStore]:
        """A proxy app on this Redis and engine (or ``engine``), with the session's models (or
        ``models``), not yet serving."""
        rules = RedisRuleStore(connect(Settings(), self.redis_url), self.prefix)
        spans = InMemorySpanExporter()
        settings = {"admin_token": ADMIN_TOKEN, "override_token": OVERRIDE_TOKEN, **settings}
        config = Settings(refresh_interval_s=refresh_interval_s, redis_prefix=self.prefix,
                          **settings)
        store = FlakyStore(engine or self.engine.store)
        deps = Deps(rules_store=rules, vector_store=store,
                    tracer_provider=tracer_provider(environ or {}, SimpleSpanProcessor(spans)),
                    models=models or self.engine.model_cache(self.models_dir),
                    jobs=rules.backfill_queue,
                    handed=RedisHandedOut(rules.client, self.prefix, config.handed_out_max),
                    answers=RedisAnswerLog(rules.client, self.prefix,
                                           config.feedback_answers_max))
        return make_app(config, deps), config, rules, spans, store

    async def start(self, refresh_interval_s: float = 3600.0,
                    environ: dict[str, str] | None = None, engine: VectorStore | None = None,
                    models: ModelCache | None = None, **settings: Any) -> Proxy:
        app, _, rules, spans, store = self.app(refresh_interval_s, environ, engine, models,
                                               **settings)
        client: TestClient[Any, Any] = TestClient(TestServer(app, host="127.0.0.1"))
        await client.start_server()
        proxy = Proxy(client, app, spans, rules, store)
        self.started.append(proxy)
        return proxy

    async def close(self) -> None:
        for proxy in self.started:
            await proxy.client.close()
            await proxy.rules.aclose()


@pytest.fixture
async def proxies(redis_server: EmbeddedRedis, prefix: str, demo_engine: Engine,
                  models_dir: Path) -> AsyncIterator[ProxyFactory]:
    factory = ProxyFactory(redis_server.url, prefix, demo_engine, models_dir)
    yield factory
    await factory.close()


@pytest.fixture
async def own_redis(tmp_path: Path, prefix: str, demo_engine: Engine, models_dir: Path
                    ) -> AsyncIterator[tuple[EmbeddedRedis, ProxyFactory]]:
    """A redis-server of this test's own, to kill or to empty, and proxies on it."""
    server = make_server(tmp_path)
    server.start()
    factory = ProxyFactory(server.url, prefix, demo_engine, models_dir)
    try:
        yield server, factory
    finally:
        await factory.close()
        server.stop()
