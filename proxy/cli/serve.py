"""``embedshift serve``: the proxy, on embedded defaults unless told otherwise.

With no ``REDIS_URL`` it starts the embedded redis-server; with no ``QDRANT_URL`` it runs Qdrant's
engine in-process under the data folder. On embedded defaults it also declares the demo alias
``products``, builds its two models and loads the demo catalogue (v1 whole, v2 in part), so a fresh
machine has something to search. Then it serves on ``host:port`` (127.0.0.1:8080).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
from collections.abc import Mapping
from pathlib import Path

import structlog
from msgspec.structs import replace

from proxy.cli import found
from proxy.cli.common import AddCommand
from proxy.cli.demo import load_demo
from proxy.config import Settings
from proxy.ingest.writer import Ingestor
from proxy.models.catalog import default_rollout
from proxy.models.loader import ModelCache
from proxy.qdrant_api.app import make_qdrant_app
from proxy.qdrant_api.handlers import Parts
from proxy.qdrant_grpc.server import GrpcEdge
from proxy.state.answers import RedisAnswerLog
from proxy.state.base import RuleStore
from proxy.state.handed import RedisHandedOut
from proxy.state.limits import RedisLimits
from proxy.state.redis_server import EmbeddedRedis
from proxy.state.rulestore import open_store
from proxy.telemetry import configure_logging, tracer_provider
from proxy.vectors.base import VectorStore
from proxy.vectors.edge import EdgeStore
from proxy.vectors.server import ServerStore
from proxy.web.app import Deps, make_app
from proxy.web.keys import EMBEDDER, INGESTOR, READY, SEARCHER, TRACER
from proxy.web.server import serve_until_signalled
from rollout_rules.errors import NotFoundError

DEMO_ALIAS = "products"
log = structlog.get_logger("embedshift.serve")


async def serve(settings: Settings, environ: Mapping[str, str], demo: bool = True) -> None:
    data = settings.data_path  # resolved once: later the working folder may be gone
    embedded = None if settings.redis_url else EmbeddedRedis(data, environ)
    ours = embedded is not None and not embedded.is_running()  # stopped with us, if we start it
    rules = open_store(settings, environ)
    vectors: VectorStore = (
        ServerStore.connect(settings.qdrant_url, settings.qdrant_api_key,
                            settings.qdrant_read_consistency) if settings.qdrant_url
        else EdgeStore(data / "qdrant", search_threads=settings.edge_search_threads))
    models = ModelCache(settings.models_path,  # the demo and the request path share them
                        limits=RedisLimits(rules.client, settings.redis_prefix))  # and replicas
    if demo and settings.redis_url is None and settings.qdrant_url is None:
        await prepare_demo(rules, Ingestor(vectors, rules, models),
                           data / "demo-declared")
    deps = Deps(rules_store=rules, vector_store=vectors, tracer_provider=tracer_provider(environ),
                models=models, jobs=rules.backfill_queue,
                handed=RedisHandedOut(rules.client, settings.redis_prefix,
                                      settings.handed_out_max),
                answers=RedisAnswerLog(rules.client, settings.redis_prefix,
                                       settings.feedback_answers_max))
    here = Path.cwd()
    record: list[Path] = []

    def listening(url: str) -> None:
        record.append(found.write(here, data_dir=data, url=url,
                                  host=settings.host, port=settings.port))
        print((_HINT if demo else _OWN_HINT).format(url=url), flush=True)
        if settings.qdrant_port:
            print(f"Qdrant's REST API (a collection name is an alias) on "
                  f"http://{settings.host}:{settings.qdrant_port}", flush=True)
        if settings.qdrant_grpc_port is not None:
            print(f"Qdrant's gRPC API on {settings.host}:{edges[0].port}", flush=True)

    async def close_stores() -> None:
        await vectors.close()
        await rules.aclose()
        for path in record:
            found.remove(path)
        if ours and embedded is not None:
            await asyncio.to_thread(embedded.stop)
            log.info("redis_stopped", data_dir=str(data))

    app = make_app(settings, deps)
    also = [] if settings.qdrant_port is None else [
        (make_qdrant_app(settings, app[SEARCHER], app[TRACER], app[INGESTOR], app[EMBEDDER],
                         lifecycle=app[READY]), replace(settings, port=settings.qdrant_port))]
    edges = [] if settings.qdrant_grpc_port is None else [GrpcEdge(
        Parts(settings, app[SEARCHER], app[TRACER], app[INGESTOR], app[EMBEDDER], app[READY]),
        settings.host, settings.qdrant_grpc_port)]
    await serve_until_signalled(app, settings, on_listening=listening,
                                after_cleanup=close_stores, also=also, edges=edges)


async def prepare_demo(rules: RuleStore, ingestor: Ingestor, marker: Path | None = None
                       ) -> None:
    """Declare the demo alias into a store that never held it, and load its catalogue once.

    A restart writes nothing over what an operator or another proxy wrote: the alias is
    declared only where ``marker`` (a file under the data folder, which outlives a Redis data
    loss) says this data folder never declared it, and never again after a deletion; the
    coverage is counted only when the catalogue is loaded."""
    try:
        rollout = await rules.get(DEMO_ALIAS)
    except NotFoundError:
        if await rules.deleted(DEMO_ALIAS):
            return
        if marker is not None and await asyncio.to_thread(marker.exists):
            log.error("demo_alias_missing", alias=DEMO_ALIAS, hint=(
                "declared here before, gone from the rule store without a deletion: not "
                "declared again over it; restore it from a proxy that still serves it (POST "
                f"/admin/aliases/{DEMO_ALIAS}/restore) or `embedshift init {DEMO_ALIAS}`"))
            return
        rollout = await rules.create(default_rollout(DEMO_ALIAS), "embedshift serve",
                                     "demo alias declared by serve")
        if marker is not None:
            await asyncio.to_thread(_mark, marker, rollout.revision)
    for version in rollout.versions:
        await ingestor.models.get(version)
        print(f"model {version.name}: {version.model} ready", flush=True)
    await load_demo(rollout, ingestor)


def _mark(marker: Path, revision: int) -> None:
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(f"{DEMO_ALIAS} declared at revision {revision}\n")


def run(settings: Settings, environ: Mapping[str, str], demo: bool = True) -> None:
    configure_logging()  # JSON lines unless a person is watching the terminal
    try:
        import uvloop

        loop_factory = uvloop.new_event_loop
    except ImportError:  # uvloop is Linux/macOS only; asyncio's loop serves elsewhere
        loop_factory = None
    with contextlib.suppress(KeyboardInterrupt), asyncio.Runner(loop_factory=loop_factory) as r:
        r.run(serve(settings, environ, demo))


def command(args: argparse.Namespace, settings: Settings, environ: Mapping[str, str]) -> None:
    run(settings, environ, demo=not args.no_demo)


def add_parsers(add: AddCommand) -> None:
    p = add("serve", command, "run the search proxy (embedded Redis, Qdrant and a demo by "
                              "default)")
    p.add_argument("--host", help="address to listen on (default: EMBEDSHIFT_HOST, else "
                                  "127.0.0.1)")
    p.add_argument("--port", type=int, help="port to listen on (default: EMBEDSHIFT_PORT, "
                                            "else 8080)")
    p.add_argument("--qdrant-port", type=int,
                   help="also serve Qdrant's REST API here, a collection name being an alias "
                        "(default: EMBEDSHIFT_QDRANT_PORT, else off; 6333 is Qdrant's own)")
    p.add_argument("--qdrant-grpc-port", type=int,
                   help="also serve Qdrant's gRPC API here (default: "
                        "EMBEDSHIFT_QDRANT_GRPC_PORT, else off; 6334 is Qdrant's own)")
    p.add_argument("--no-demo", action="store_true",
                   help="serve only the aliases the rules declare (no demo catalogue)")


_HINT = """
embedshift is serving on {url} (Ctrl-C or SIGTERM drains, then stops). Try a search:

  curl -s {url}/v1/aliases/products/search -H 'Content-Type: application/json' \\
       -d '{{"query": "warm jacket for winter", "user_id": "alice", "limit": 3}}'

and, in another terminal (same folder), move traffic:

  uv run embedshift status products
  uv run embedshift set products 20 --reason "first ramp"
  uv run embedshift explain products --user alice
  uv run embedshift rollback products --reason "p99 regression"
  uv run embedshift history products

The demo's v2 holds 60% of the catalogue, so the gate keeps every user on v1 until it is
complete (serve with EMBEDSHIFT_ADMIN_TOKEN set, then `uv run embedshift backfill products`).

Health: {url}/readyz   Metrics: {url}/metrics   API: {url}/openapi.json
"""

_OWN_HINT = """
embedshift is serving on {url} the aliases the rules declare (Ctrl-C or SIGTERM drains, then
stops). Declare yours, write your documents, backfill the candidate:

  uv run embedshift init ALIAS --file rules.toml
  uv run embedshift ingest ALIAS documents.jsonl
  uv run embedshift backfill ALIAS

Health: {url}/readyz   Metrics: {url}/metrics   API: {url}/openapi.json
"""
