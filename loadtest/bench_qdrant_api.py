"""Search through the Qdrant API against the native API, side by side in one run:

    uv run python -m loadtest.bench_qdrant_api [--rate 200] [--seconds 5] [--rounds 3]

One ``embedshift serve`` on embedded defaults with ``EMBEDSHIFT_QDRANT_PORT`` set, so both APIs
share one process, one searcher and its caches. The same 500 requests (10 queries x 50 users)
go to ``POST /v1/aliases/products/search`` (user in the body) and to ``POST
/collections/products/points/query`` (a Document, the user in ``x-qdrant-route-affinity``),
alternating native, Qdrant, native, ... for ``--rounds`` rounds so drift of a shared machine falls
on both alike: latency open loop at a fixed rate, then throughput closed loop with ``wrk``
(Debian package ``wrk``). The ratio of medians is the Qdrant API's cost (at most 10% more). A
third row asks the Qdrant API for 500 hits (``limit`` 500, payloads included), a reranker's
fetch: what a deep page costs beside ten hits.
Traffic goes only to 127.0.0.1, bounded in time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import tempfile
from pathlib import Path
from typing import Any

import aiohttp

from loadtest.bench_proxy import QUERIES, fixed_rate, start, stop_serving, wrk
from loadtest.ports import free_port

USERS = 50


def native(i: int) -> tuple[dict[str, str], dict[str, Any]]:
    return {}, {"query": QUERIES[i % len(QUERIES)], "user_id": f"u{i % USERS}", "limit": 10}


def qdrant(i: int, limit: int = 10) -> tuple[dict[str, str], dict[str, Any]]:
    return ({"x-qdrant-route-affinity": f"u{i % USERS}"},
            {"query": {"nearest": {"text": QUERIES[i % len(QUERIES)], "model": "any"}},
             "limit": limit})


def deep(i: int) -> tuple[dict[str, str], dict[str, Any]]:
    """A reranker's fetch: 500 candidates with their payloads (the demo alias holds 300)."""
    return qdrant(i, DEEP)


DEEP = 500
SHAPES = {"native": native, "qdrant": qdrant, "deep": deep}


async def latency(url: str, shape: str, rate: float, seconds: float) -> tuple[float, float]:
    make = SHAPES[shape]
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=64)) as session:
        async def send(i: int) -> None:
            headers, body = make(i)
            async with session.post(url, json=body, headers=headers) as response:
                assert response.status == 200, await response.text()
                await response.read()

        for i in range(500):  # warm the caches and connections
            await send(i)
        p50, p99, _ = await fixed_rate(send, rate, seconds)
    return p50, p99


def throughput(url: str, shape: str, seconds: float, connections: int) -> float:
    requests = [SHAPES[shape](i) for i in range(500)]
    bodies = ", ".join(json.dumps(json.dumps(body)) for _, body in requests)
    users = ", ".join(json.dumps(headers.get("x-qdrant-route-affinity", "")) for headers, _ in
                      requests)
    script = ('wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n'
              f"local bodies = {{{bodies}}}\nlocal users = {{{users}}}\nlocal i = 0\n"
              "request = function()\n  i = i % #bodies + 1\n"
              '  local h = {["Content-Type"] = "application/json"}\n'
              '  if users[i] ~= "" then h["x-qdrant-route-affinity"] = users[i] end\n'
              "  return wrk.format(nil, nil, h, bodies[i])\nend\n")
    rps, errors = wrk(script, url, seconds, connections)
    if errors != "all 2xx":
        raise SystemExit(f"{shape}: {errors}")
    return rps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=200)
    parser.add_argument("--seconds", type=float, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=32)
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is needed for the throughput rows: apt-get install wrk")
    data_dir = tempfile.mkdtemp(prefix="embedshift-bench-qdrant-")
    models = Path(".embedshift/models")
    if models.is_dir():  # built already here: not again
        os.symlink(models.resolve(), Path(data_dir) / "models")
    port, qdrant_port = free_port(), free_port()
    query_url = f"http://127.0.0.1:{qdrant_port}/collections/products/points/query"
    urls = {"native": f"http://127.0.0.1:{port}/v1/aliases/products/search",
            "qdrant": query_url, "deep": query_url}
    process = start(["serve-full", str(port), data_dir, f"EMBEDSHIFT_QDRANT_PORT={qdrant_port}"],
                    f"http://127.0.0.1:{port}/readyz")
    rows: dict[str, dict[str, list[float]]] = {shape: {"p50": [], "p99": [], "rps": []}
                                               for shape in SHAPES}
    try:
        for _ in range(args.rounds):
            for shape, url in urls.items():
                p50, p99 = asyncio.run(latency(url, shape, args.rate, args.seconds))
                rows[shape]["p50"].append(p50)
                rows[shape]["p99"].append(p99)
                rows[shape]["rps"].append(throughput(url, shape, args.seconds,
                                                     args.connections))
    finally:
        stop_serving(process, data_dir)
    report(rows, args)


def report(rows: dict[str, dict[str, list[float]]], args: argparse.Namespace) -> None:
    print(f"{args.rounds} alternating rounds; latency at {args.rate:g} req/s for "
          f"{args.seconds:g}s, throughput closed loop ({args.connections} connections, "
          f"{args.seconds:g}s); medians of the rounds, warm caches, loopback\n")
    median = table(rows, {"native": "native  POST /v1/aliases/products/search",
                          "qdrant": "Qdrant  POST /collections/products/points/query",
                          "deep": f"Qdrant  the same, limit {DEEP}"})
    n, q, d = median["native"], median["qdrant"], median["deep"]
    print(f"\nQdrant API / native: p50 {q['p50'] / n['p50']:.2f}x, p99 {q['p99'] / n['p99']:.2f}x,"
          f" throughput {q['rps'] / n['rps']:.2f}x (the target: cost at most 10% more)")
    print(f"limit {DEEP} / limit 10: p50 {d['p50'] / q['p50']:.2f}x, throughput "
          f"{d['rps'] / q['rps']:.2f}x")


def table(rows: dict[str, dict[str, list[float]]], labels: dict[str, str]
          ) -> dict[str, dict[str, float]]:
    """Each row's medians of its rounds, printed under ``labels``, and every round's
    throughput after the table; the medians."""
    width = max(map(len, labels.values())) + 2
    print(f"{'API':{width}} {'p50 ms':>7} {'p99 ms':>7} {'req/s':>8}")
    median = {row: {k: statistics.median(v) for k, v in values.items()}
              for row, values in rows.items()}
    for row, label in labels.items():
        m = median[row]
        print(f"{label:{width}} {m['p50']:7.2f} {m['p99']:7.2f} {m['rps']:8.0f}")
    print("rounds, req/s: " + "; ".join(f"{row} " + " ".join(f"{r:.0f}" for r in v["rps"])
                                        for row, v in rows.items()))
    return median


if __name__ == "__main__":
    main()
