"""Queries through the proxy to a served model, against the server called directly, in one run:

    uv run python -m loadtest.bench_served [--seconds 10] [--rounds 3] [--clients 32]

The server is a real one (Infinity serving all-MiniLM-L6-v2 on the CPU, started here as the tests
start it). The proxy runs in this process (the native app on embedded parts: the rule store's
fake, Qdrant's embedded engine) with an alias whose stable version is that served model, every
cache off so every query is a call. ``--clients`` users search at once for ``--seconds``; the
proxy batches their queries into calls. Then the server is called directly by as many callers as
the proxy may make calls at once, each call the average batch the proxy made: the same texts per
call, the same calls at once. Rounds alternate proxy, direct, ... so drift on a shared machine
falls on both. The ratio is queries/s through the proxy over texts/s direct (#25: >= 90%).
Traffic goes only to 127.0.0.1, bounded in time.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp.test_utils import TestClient, TestServer

from loadtest.corpus import corpus
from proxy.config import Settings
from proxy.ingest.writer import Ingestor
from proxy.models.catalog import add_served, open_model
from proxy.models.loader import ModelCache
from proxy.models.served import ServedSpec
from proxy.state.memory import MemoryRuleStore
from proxy.telemetry import tracer_provider
from proxy.vectors.edge import EdgeStore
from proxy.web.app import Deps, make_app
from rollout_rules.model import Rollout, Target, Version
from tests.servers import KEY, SERVED_NAME, Infinity

ENV = {"BENCH_KEY": KEY}
counter = itertools.count()


def text() -> str:
    i = next(counter)
    return f"search number {i}: a {('warm', 'light', 'red', 'dry')[i % 4]} jacket for trip {i}"


async def through_proxy(client: TestClient[Any, Any], clients: int, seconds: float) -> float:
    done = 0
    stop = time.monotonic() + seconds

    async def user(u: int) -> None:
        nonlocal done
        while time.monotonic() < stop:
            response = await client.post("/v1/aliases/kb/search",
                                         json={"query": text(), "user_id": f"u{u}"})
            assert response.status == 200, await response.text()
            await response.read()
            done += 1
    began = time.monotonic()
    await asyncio.gather(*(user(u) for u in range(clients)))
    return done / (time.monotonic() - began)


async def direct(url: str, callers: int, batch: int, seconds: float) -> float:
    done = 0
    stop = time.monotonic() + seconds
    headers = {"Authorization": f"Bearer {KEY}"}
    async with aiohttp.ClientSession() as session:
        async def caller() -> None:
            nonlocal done
            while time.monotonic() < stop:
                texts = [text() for _ in range(batch)]
                async with session.post(f"{url}/embeddings", headers=headers, json={
                        "model": SERVED_NAME, "input": texts,
                        "encoding_format": "float"}) as response:
                    assert response.status == 200, await response.text()
                    await response.read()
                done += batch
        began = time.monotonic()
        await asyncio.gather(*(caller() for _ in range(callers)))
        return done / (time.monotonic() - began)


async def bench(args: argparse.Namespace, work: Path, server: Infinity) -> None:
    catalogue = work / "models"
    await asyncio.to_thread(add_served, "l6-api", ServedSpec(
        url=server.url, model_id=SERVED_NAME, dimensions=0, api_key_env="BENCH_KEY",
        max_batch=args.max_batch, max_concurrency=args.concurrency), catalogue, environ=ENV)
    models = ModelCache(catalogue, load=lambda v: open_model(v, catalogue, 1, environ=ENV))
    rules, store = MemoryRuleStore(), EdgeStore(work / "qdrant")
    version = Version(name="v1", model="l6-api", dimensions=384,
                      target=Target(collection="kb_v1"))
    rollout = await rules.create(Rollout(alias="kb", versions=(version,), stable="v1"),
                                 "bench", "declare")
    await Ingestor(store, rules, models).write(rollout, corpus(300))
    settings = Settings(cache_size=0, result_cache_size=0, guard_tick_s=0, drift_check_s=0,
                        popularity_sample=0)
    app = make_app(settings, Deps(rules_store=rules, vector_store=store,
                                  tracer_provider=tracer_provider({}), models=models))
    client: TestClient[Any, Any] = TestClient(TestServer(app, host="127.0.0.1"))
    await client.start_server()
    served = (await models.get(version))
    proxied, called, batches = [], [], []
    try:
        await through_proxy(client, args.clients, 2.0)  # warm
        for _ in range(args.rounds):
            before = served.figures()  # type: ignore[attr-defined]
            proxied.append(await through_proxy(client, args.clients, args.seconds))
            after = served.figures()  # type: ignore[attr-defined]
            batch = (after["texts"] - before["texts"]) / max(1, after["ok"] - before["ok"])
            batches.append(batch)
            called.append(await direct(server.url, args.concurrency, max(1, round(batch)),
                                       args.seconds))
            print(f"round: proxy {proxied[-1]:.1f} queries/s (calls of {batch:.1f} texts on "
                  f"average), direct {called[-1]:.1f} texts/s", flush=True)
    finally:
        await client.close()
        await store.close()
    ratio = statistics.median(p / d for p, d in zip(proxied, called, strict=True))
    print(f"\nserved model, {args.clients} users, {args.concurrency} calls at once, "
          f"{args.rounds} rounds of {args.seconds:g} s")
    print(f"  through the proxy  {statistics.median(proxied):8.1f} queries/s (median)")
    print(f"  server directly    {statistics.median(called):8.1f} texts/s (median, calls of "
          f"{round(statistics.median(batches))} texts)")
    print(f"  ratio              {ratio:8.2f} (median of rounds; target >= 0.90)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--concurrency", type=int, default=4, help="the model's calls at once")
    parser.add_argument("--max-batch", type=int, default=32)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-served-") as work:
        server = Infinity(Path(work)).start()
        try:
            asyncio.run(bench(args, Path(work), server))
        finally:
            server.stop()


if __name__ == "__main__":
    main()
