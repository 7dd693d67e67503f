"""Search through Qdrant's gRPC API, its REST API and the native API, side by side in one run:

    uv run python -m loadtest.bench_qdrant_grpc [--rate 200] [--seconds 5] [--rounds 3]

One ``embedshift serve`` on embedded defaults with both Qdrant ports set, so the three APIs
share one process, one searcher and its caches. The same requests (10 queries x 50 users) go to
``POST /v1/aliases/products/search``, to ``POST /collections/products/points/query`` (a
Document, the user in ``x-qdrant-route-affinity``) and to ``qdrant.Points/Query`` (the same, in
gRPC metadata), alternating native, REST, gRPC, ... for ``--rounds`` rounds so drift of a shared
machine falls on all alike: latency open loop at a fixed rate (aiohttp and grpc.aio clients),
then throughput closed loop with one load tool for all three, ``h2load`` (Debian package
``nghttp2-client``; HTTP/1.1 for the JSON APIs, HTTP/2 for gRPC), one query and user each
(warm caches). The target: gRPC's p50 and throughput at least REST's. A fourth row is the
gRPC server's ceiling here: ``qdrant.Qdrant/HealthCheck``, which does no work.
Traffic goes only to 127.0.0.1, bounded in time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import struct
import subprocess
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
import grpc
from qdrant_client import grpc as pb
from qdrant_client.grpc import points_service_pb2_grpc, qdrant_pb2_grpc

from loadtest.bench_proxy import QUERIES, fixed_rate, start, stop_serving
from loadtest.bench_qdrant_api import table
from loadtest.ports import free_port

USERS = 50
ROWS = ("native", "rest", "grpc", "ceiling")


def native_body(i: int) -> dict[str, object]:
    return {"query": QUERIES[i % len(QUERIES)], "user_id": f"u{i % USERS}", "limit": 10}


def rest_body(i: int) -> dict[str, object]:
    return {"query": {"nearest": {"text": QUERIES[i % len(QUERIES)], "model": "any"}},
            "limit": 10, "with_payload": True}


def grpc_message(i: int) -> pb.QueryPoints:
    return pb.QueryPoints(collection_name="products", limit=10, query=pb.Query(
        nearest=pb.VectorInput(document=pb.Document(text=QUERIES[i % len(QUERIES)],
                                                     model="any"))),
        with_payload=pb.WithPayloadSelector(enable=True))


def user(i: int) -> str:
    return f"u{i % USERS}"


async def latency(row: str, urls: dict[str, str], rate: float, seconds: float
                  ) -> tuple[float, float]:
    if row in ("grpc", "ceiling"):
        async with grpc.aio.insecure_channel(urls["grpc"]) as channel:
            points = points_service_pb2_grpc.PointsStub(channel)  # type: ignore[no-untyped-call]
            health = qdrant_pb2_grpc.QdrantStub(channel)  # type: ignore[no-untyped-call]

            async def call(i: int) -> None:
                if row == "ceiling":
                    await health.HealthCheck(pb.HealthCheckRequest())
                else:
                    await points.Query(grpc_message(i),
                                       metadata=[("x-qdrant-route-affinity", user(i))])

            return await _timed(call, rate, seconds)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=64)) as session:
        async def send(i: int) -> None:
            body = native_body(i) if row == "native" else rest_body(i)
            headers = {} if row == "native" else {"x-qdrant-route-affinity": user(i)}
            async with session.post(urls[row], json=body, headers=headers) as response:
                assert response.status == 200, await response.text()
                await response.read()

        return await _timed(send, rate, seconds)


async def _timed(send: Callable[[int], Awaitable[None]], rate: float, seconds: float
                 ) -> tuple[float, float]:
    for i in range(500):  # warm the caches and connections
        await send(i)
    p50, p99, _ = await fixed_rate(send, rate, seconds)
    return p50, p99


def throughput(row: str, urls: dict[str, str], seconds: float, connections: int,
               folder: Path) -> float:
    """Requests/s of ``h2load`` (one thread, closed loop, one request in flight per
    connection) for the row's first request."""
    body = folder / f"{row}.body"
    if row in ("grpc", "ceiling"):
        message = (pb.HealthCheckRequest() if row == "ceiling" else grpc_message(0)
                   ).SerializeToString()
        body.write_bytes(b"\x00" + struct.pack(">I", len(message)) + message)
        method = "qdrant.Qdrant/HealthCheck" if row == "ceiling" else "qdrant.Points/Query"
        where = [f"http://{urls['grpc']}/{method}", "-H", "content-type: application/grpc",
                 "-H", "te: trailers"]
    else:
        body.write_text(json.dumps(native_body(0) if row == "native" else rest_body(0)))
        where = ["--h1", urls[row], "-H", "content-type: application/json"]
    output = subprocess.run(
        ["h2load", "-D", f"{seconds:.0f}", "-c", str(connections), "-m", "1", "-d", str(body),
         "-H", f"x-qdrant-route-affinity: {user(0)}", *where],
        capture_output=True, text=True, check=True, timeout=seconds + 60).stdout
    codes = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", output)
    if codes is None or any(int(n) for n in codes.groups()[1:]):
        raise SystemExit(f"{row}: not every answer was 2xx:\n{output}")
    return float(re.search(r"finished in [\d.]+s, ([\d.]+) req/s", output)[1])  # type: ignore[index]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=200)
    parser.add_argument("--seconds", type=float, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=32)
    args = parser.parse_args()
    if shutil.which("h2load") is None:
        raise SystemExit("h2load is needed for the throughput rows: apt-get install "
                         "nghttp2-client")
    data_dir = tempfile.mkdtemp(prefix="embedshift-bench-grpc-")
    models = Path(".embedshift/models")
    if models.is_dir():  # built already here: not again
        os.symlink(models.resolve(), Path(data_dir) / "models")
    port, rest_port, grpc_port = free_port(), free_port(), free_port()
    urls = {"native": f"http://127.0.0.1:{port}/v1/aliases/products/search",
            "rest": f"http://127.0.0.1:{rest_port}/collections/products/points/query",
            "grpc": f"127.0.0.1:{grpc_port}"}
    process = start(["serve-full", str(port), data_dir, f"EMBEDSHIFT_QDRANT_PORT={rest_port}",
                     f"EMBEDSHIFT_QDRANT_GRPC_PORT={grpc_port}"],
                    f"http://127.0.0.1:{port}/readyz")
    rows: dict[str, dict[str, list[float]]] = {row: {"p50": [], "p99": [], "rps": []}
                                               for row in ROWS}
    try:
        for n in range(args.rounds):
            for row in ROWS:
                p50, p99 = asyncio.run(latency(row, urls, args.rate, args.seconds))
                rows[row]["p50"].append(p50)
                rows[row]["p99"].append(p99)
                rows[row]["rps"].append(throughput(row, urls, args.seconds, args.connections,
                                                   Path(data_dir)))
            print(f"round {n + 1} of {args.rounds}: " + ", ".join(
                f"{row} {rows[row]['rps'][-1]:.0f} req/s" for row in ROWS), flush=True)
    finally:
        stop_serving(process, data_dir)
    report(rows, args)


def report(rows: dict[str, dict[str, list[float]]], args: argparse.Namespace) -> None:
    print(f"\n{args.rounds} alternating rounds; latency at {args.rate:g} req/s for "
          f"{args.seconds:g}s, throughput closed loop (h2load, {args.connections} connections, "
          f"{args.seconds:g}s); medians of the rounds, warm caches, loopback\n")
    median = table(rows, {"native": "native  POST /v1/aliases/products/search",
                          "rest": "Qdrant REST  POST /collections/products/points/query",
                          "grpc": "Qdrant gRPC  qdrant.Points/Query",
                          "ceiling": "gRPC ceiling  qdrant.Qdrant/HealthCheck (no work)"})
    r, g = median["rest"], median["grpc"]
    print(f"\ngRPC / REST: p50 {g['p50'] / r['p50']:.2f}x, p99 {g['p99'] / r['p99']:.2f}x, "
          f"throughput {g['rps'] / r['rps']:.2f}x (the target: p50 at most 1x, throughput at "
          "least 1x)")


if __name__ == "__main__":
    main()
