"""Backfill speed against the encoder, and live latency during a backfill, side by side.

    uv run python -m loadtest.bench_backfill [--docs 300] [--seconds 10] [--qps 20]

On SciFact's corpus (``../shared/data/scifact``, the first ``--docs`` documents): stable (v1, L3)
is ingested once; then, in one run,

1. the candidate's raw encoder (``OnnxModel.embed_many``, the very model object the backfill
   uses, on the same thread count) re-encodes the same texts: documents/s, the ceiling;
2. the backfill re-encodes them into a fresh candidate collection (v2, L6) with 1 worker, then
   with 2 (Redis leases, reading stable's text, writing Qdrant's engine): documents/s and the
   overhead against (1);
3. live queries at a fixed rate (open loop, latency from the scheduled send, every query new
   text) against a proxy serving the alias, without a backfill and then during one at the
   default rate: p50/p99 and their ratio (target: p99 within 2x).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import tempfile
import time
from pathlib import Path

import aiohttp
import numpy as np
from aiohttp import web
from msgspec.structs import replace

from loadtest.ports import free_port
from proxy.config import Settings, load_settings
from proxy.ingest.backfill import DEFAULT_RATE, Backfill, Options
from proxy.ingest.documents import Document
from proxy.ingest.writer import Ingestor
from proxy.models.catalog import default_rollout
from proxy.models.loader import ModelCache
from proxy.state.client import connect
from proxy.state.redis_server import EmbeddedRedis
from proxy.state.rulestore import RedisRuleStore
from proxy.telemetry import configure_logging, tracer_provider
from proxy.vectors.edge import EdgeStore
from proxy.web.app import Deps, make_app
from rollout_rules.model import Rollout, Target

SCIFACT = Path(__file__).resolve().parents[2] / "shared" / "data" / "scifact"
TOKEN = "bench-token"


def corpus(count: int) -> list[Document]:
    rows = [json.loads(line) for line in (SCIFACT / "corpus.jsonl").open() if line.strip()]
    return [Document(id=int(r["_id"]), text=f"{r.get('title', '')}. {r['text']}".strip(),
                     payload={"title": r.get("title", "")}) for r in rows[:count]]


def queries() -> list[str]:
    return [json.loads(line)["text"] for line in (SCIFACT / "queries.jsonl").open()
            if line.strip()]


def with_candidate(base: Rollout, collection: str, alias: str) -> Rollout:
    """The alias reading stable's one collection, its candidate writing ``collection``."""
    v1, v2 = base.versions
    return replace(base, alias=alias, versions=(v1, replace(v2, target=Target(
        collection=collection))))


async def timed_backfill(ingestor: Ingestor, rules: RedisRuleStore, rollout: Rollout,
                         workers: int, rate: float | None) -> tuple[float, int]:
    rollout = await rules.create(rollout, "bench", "bench")
    backfill = Backfill(ingestor, rules.backfill_queue, f"bench-{workers}")
    began = time.perf_counter()
    await backfill.start(rollout, Options(workers=workers, rate=rate))
    await asyncio.gather(*backfill.tasks[rollout.alias])
    elapsed = time.perf_counter() - began
    done = (await rules.backfill_queue(rollout.alias, "v2").status()).done_docs
    return elapsed, done


async def open_loop(base: str, texts: list[str], qps: float, seconds: float
                    ) -> list[float]:
    """Latencies (ms) from each request's scheduled send: coordinated omission counted."""
    latencies: list[float] = []
    count = int(qps * seconds)
    async with aiohttp.ClientSession() as session:
        start = time.perf_counter() + 0.05

        async def one(i: int) -> None:
            scheduled = start + i / qps
            await asyncio.sleep(max(0.0, scheduled - time.perf_counter()))
            body = {"query": texts[i % len(texts)] + f" ({i})", "user_id": f"u{i}"}
            async with session.post(f"{base}/v1/aliases/sf/search", json=body) as response:
                await response.read()
                assert response.status == 200, response.status
            latencies.append((time.perf_counter() - scheduled) * 1000)

        await asyncio.gather(*(one(i) for i in range(count)))
    return latencies


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q))


async def run(args: argparse.Namespace) -> dict[str, object]:
    settings = load_settings(os.environ)
    work = Path(tempfile.mkdtemp(prefix="bench-backfill-"))
    redis = EmbeddedRedis(work, {})
    redis.start()
    rules = RedisRuleStore(connect(Settings(), redis.url), "bench")
    store = EdgeStore(work / "qdrant")
    models = ModelCache(settings.models_path)
    ingestor = Ingestor(store, rules, models)
    documents = corpus(args.docs)
    base = default_rollout("sf")
    stable_only = replace(base, candidate=None, versions=base.versions[:1])
    await rules.create(stable_only, "bench", "stable")
    await ingestor.write(stable_only, documents)
    await store.optimize(base.versions[0].target)
    model = await models.get(base.version("v2"))
    texts = [d.text for d in documents]
    model.embed_many(texts[:16])  # warm
    began = time.perf_counter()
    model.embed_many(texts)
    raw = len(texts) / (time.perf_counter() - began)
    results: dict[str, object] = {"documents": len(texts), "raw_encoder_docs_s": round(raw, 1)}
    for workers in (1, 2):
        rollout = with_candidate(base, f"sf_v2_w{workers}", f"sf{workers}")
        elapsed, done = await timed_backfill(ingestor, rules, rollout, workers, None)
        rate = done / elapsed
        results[f"backfill_{workers}_workers_docs_s"] = round(rate, 1)
        results[f"backfill_{workers}_workers_vs_raw"] = round(rate / raw, 3)
    results.update(await live(args, settings, rules=rules, store=store, models=models,
                              base=base))
    await store.close()
    await rules.aclose()
    redis.stop()
    return results


async def live(args: argparse.Namespace, settings: Settings, *, rules: RedisRuleStore,
               store: EdgeStore, models: ModelCache, base: Rollout) -> dict[str, object]:
    """Query latency without a backfill, then during one at the default rate."""
    port = free_port()
    app_settings = Settings(admin_token=TOKEN, redis_prefix="bench", port=port,
                            data_dir=str(settings.data_path), popularity_sample=0.2)
    app = make_app(app_settings, Deps(rules_store=rules, vector_store=store,
                                      tracer_provider=tracer_provider({}), models=models,
                                      jobs=rules.backfill_queue))
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    url = f"http://127.0.0.1:{port}"
    serving = await rules.write(with_candidate(base, "sf_v2_live", "sf"),
                                await rules.revision("sf"), "bench", "candidate declared")
    await asyncio.sleep(1.0)  # the proxy loads the candidate's model
    texts_q = queries()
    quiet = await open_loop(url, texts_q, args.qps, args.seconds)
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {TOKEN}"}) as admin:
        async with admin.post(f"{url}/admin/aliases/sf/backfill",
                              json={"batch_size": args.batch}) as response:
            assert response.status == 200, await response.text()
        busy = await open_loop(url, texts_q[::-1], args.qps, args.seconds)
        async with admin.get(f"{url}/admin/aliases/sf/backfill") as response:
            during = await response.json()
        async with admin.post(f"{url}/admin/aliases/sf/backfill/stop") as response:
            await response.read()
    await runner.cleanup()
    assert serving.candidate == "v2"
    results: dict[str, object] = {
        "default_rate_docs_s": DEFAULT_RATE,
        "backfill_docs_s_during_queries": round(during["rate_docs_s"] or 0.0, 1),
        "queries_per_s": args.qps, "seconds": args.seconds,
        "p50_ms_no_backfill": round(pct(quiet, 50), 2),
        "p99_ms_no_backfill": round(pct(quiet, 99), 2),
        "p50_ms_during_backfill": round(pct(busy, 50), 2),
        "p99_ms_during_backfill": round(pct(busy, 99), 2),
        "p99_ratio": round(pct(busy, 99) / pct(quiet, 99), 2)}
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--docs", type=int, default=300)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--qps", type=float, default=20.0)
    parser.add_argument("--batch", type=int, default=16, help="backfill batch during queries")
    args = parser.parse_args()
    if not (SCIFACT / "corpus.jsonl").exists():
        raise SystemExit(f"SciFact is not at {SCIFACT}: this benchmark reads it from there")
    configure_logging()
    results = asyncio.run(run(args))
    width = max(map(len, results))
    for key, value in results.items():
        print(f"{key:<{width}}  {value}")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
