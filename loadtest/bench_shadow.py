"""What shadow traffic costs the user, and how much two models agree, in one run:

    uv run python -m loadtest.bench_shadow [--rate 60] [--seconds 15] [--rounds 2]

(a) ``embedshift serve`` on embedded defaults (demo alias, every user on stable v1 L3, v2 L6 the
    candidate) answers new queries at a fixed rate, open loop, in alternating phases: shadowing
    off, then 10% of stable's queries also searched in v2 off the response path, repeated
    ``--rounds`` times so drift hits both alike. Every query is new text (no cache answers), so a
    shadow costs a real forward pass of the other model. Printed: user-visible p50/p99 per
    setting and their ratio, and how many shadows were compared or dropped.
(b) with BEIR SciFact in ``../shared/data/scifact`` (not in this repository; skipped, saying so,
    when absent): overlap@10 of L3's and L6's top 10 over SciFact's 5,183 abstracts for its 300
    test queries, the figure shadow traffic measures live.

Loopback only; every phase is bounded in time and count.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import re
import shutil
import tempfile
import time
import urllib.request
from pathlib import Path

import aiohttp
import numpy as np
from msgspec.structs import replace

from loadtest.bench_proxy import start
from loadtest.ports import free_port
from proxy.config import Settings
from proxy.models.catalog import resolve
from proxy.models.encoders import OnnxModel, default_threads
from proxy.models.evaluation import load_beir, top_k
from proxy.serving.shadow import overlap_at
from proxy.state.client import connect
from proxy.state.redis_server import EmbeddedRedis
from proxy.state.rulestore import RedisRuleStore

SCIFACT = Path(__file__).resolve().parents[2] / "shared" / "data" / "scifact"
WORDS = ("warm", "light", "waterproof", "jacket", "tent", "boots", "stove", "kayak", "trail",
         "running", "shoes", "sleeping", "bag", "lamp", "rope", "gloves", "helmet", "bottle")


async def set_shadow(data_dir: Path, share: float) -> None:
    """Write the demo rule with every user on stable and ``share`` of queries shadowed."""
    store = RedisRuleStore(connect(Settings(), EmbeddedRedis(data_dir, os.environ).url))
    try:
        rule = await store.get("products")
        await store.write(replace(rule, percent=0.0, guard=replace(rule.guard,
                                                                   shadow_share=share)),
                          rule.revision, "bench", f"shadow {share:g}")
    finally:
        await store.aclose()


async def phase(url: str, rate: float, seconds: float, seed: int) -> list[float]:
    """Latencies (ms) of new queries sent at ``rate`` for ``seconds``, from their due time."""
    rng = random.Random(seed)
    latencies: list[float] = []
    async with aiohttp.ClientSession() as session:
        begin = time.perf_counter()

        async def one(i: int) -> None:
            due = begin + i / rate
            await asyncio.sleep(max(0.0, due - time.perf_counter()))
            text = " ".join(rng.choice(WORDS) for _ in range(4)) + f" {seed}-{i}"
            async with session.post(url, json={"query": text, "user_id": f"u{i % 500}",
                                               "limit": 10}) as answer:
                assert answer.status == 200, await answer.text()
                await answer.read()
            latencies.append((time.perf_counter() - due) * 1000)

        await asyncio.gather(*(one(i) for i in range(int(rate * seconds))))
    return latencies


def shadow_counts(metrics_url: str) -> dict[str, float]:
    with urllib.request.urlopen(metrics_url, timeout=5) as answer:
        text = answer.read().decode()
    return {m[0]: float(m[1]) for m in re.findall(
        r'embedshift_shadow_total\{alias="products",result="(\w+)",version="v2"\} (\S+)', text)}


def latency_run(args: argparse.Namespace, data_dir: Path) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    process = start(["serve-full", str(port), str(data_dir)], f"{url}/readyz")
    try:
        results: dict[float, list[float]] = {0.0: [], 0.1: []}
        asyncio.run(phase(f"{url}/v1/aliases/products/search", args.rate, 3, seed=999))  # warm
        for round_ in range(args.rounds):
            for share in (0.0, 0.1):
                asyncio.run(set_shadow(data_dir, share))
                time.sleep(0.5)  # every watcher has the rule
                results[share] += asyncio.run(phase(f"{url}/v1/aliases/products/search",
                                                    args.rate, args.seconds,
                                                    seed=round_ * 10 + int(share * 10)))
        counts = shadow_counts(f"{url}/metrics")
    finally:
        process.terminate()
        process.wait(timeout=30)
        EmbeddedRedis(data_dir, os.environ).stop()
    off, on = (np.percentile(results[s], [50, 99]) for s in (0.0, 0.1))
    print(f"(a) {args.rate:g} new queries/s, {args.rounds} x {args.seconds:g} s per setting, "
          f"user-visible latency from the due time:")
    print(f"    shadowing off        p50 {off[0]:6.2f} ms   p99 {off[1]:6.2f} ms   "
          f"({len(results[0.0])} queries)")
    print(f"    shadowing 10%        p50 {on[0]:6.2f} ms   p99 {on[1]:6.2f} ms   "
          f"({len(results[0.1])} queries)")
    print(f"    ratio (10% / off)    p50 {on[0] / off[0]:6.3f}      p99 {on[1] / off[1]:6.3f}")
    print(f"    shadows: {', '.join(f'{k} {v:g}' for k, v in sorted(counts.items()))}")


def overlap_run(models_dir: Path) -> None:
    if not (SCIFACT / "corpus.jsonl").is_file():
        print(f"(b) skipped: BEIR SciFact is not at {SCIFACT} (not part of this repository)")
        return
    from proxy.models.catalog import default_rollout

    dataset = load_beir(SCIFACT)
    rankings = []
    for version in default_rollout("products").versions:
        model = OnnxModel(resolve(version, models_dir), threads=default_threads())
        started = time.perf_counter()
        docs = model.embed_many(dataset.docs, 32)
        queries = model.embed_many(dataset.queries, 32)
        rankings.append(top_k(queries, docs, 10))
        print(f"    {version.model}: encoded {len(dataset.docs)} documents and "
              f"{len(dataset.queries)} queries in {time.perf_counter() - started:.0f} s")
    overlaps = [overlap_at(list(a), list(b), 10) for a, b in zip(*rankings, strict=True)]
    print(f"(b) overlap@10 of L3 and L6 on SciFact ({len(overlaps)} queries, "
          f"{len(dataset.docs)} documents): mean {np.mean(overlaps):.3f}, median "
          f"{np.median(overlaps):.2f}, none in common for {np.mean(np.equal(overlaps, 0)):.1%}"
          f" of queries, all ten for {np.mean(np.equal(overlaps, 1)):.1%}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rate", type=float, default=60.0)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    data_dir = Path(tempfile.mkdtemp(prefix="embedshift-shadow-"))
    try:
        latency_run(args, data_dir)
        overlap_run(data_dir / "models")
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
