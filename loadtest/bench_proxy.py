"""The proxy over loopback against its own parts, in one run:

    uv run python -m loadtest.bench_proxy [--rate 200] [--seconds 10] [--connections 32]

(a) the full path: ``embedshift serve`` on embedded defaults (Redis, Qdrant engine, ONNX), run as
    its own process, queried over HTTP with warm caches (10 queries x 50 users, repeated). It
    runs four times: as configured by default (query vectors and recent answers cached; no
    trace exporter, so no span is recorded), exporting 10% of traces and then every trace by
    OTLP/HTTP to a receiver in its own process (which reads and drops them), and with the
    result cache off (every query is searched; its vector comes from the cache);
(b) the same queries sent directly to the store in-process with precomputed vectors: search
    alone, so (a, result cache off) - (b) is the proxy's own overhead (routing, HTTP, JSON,
    cache lookup, telemetry);
(c) a bare aiohttp JSON endpoint in its own process that answers every request with the
    proxy's own answer (captured from (a)), decoded and re-encoded: the HTTP ceiling for the
    same bytes on the wire.

Latency is measured open loop at a fixed rate, well below capacity; throughput closed loop
with ``wrk`` when it is installed (Debian package ``wrk``), else with a Python client (which
then may be the bottleneck, and says so).
Every phase is bounded in time and sends traffic only to 127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import aiohttp
import msgspec
import numpy as np
from aiohttp import web

from loadtest.ports import free_port

QUERIES = ["warm jacket for winter", "tent for two people", "water filter for hiking",
           "light for night hikes", "boots for rocky trails", "stove that boils fast",
           "kids backpack", "recycled fleece", "helmet for cycling", "snow goggles"]
BODY = {"query": QUERIES[0], "user_id": "bench-user", "limit": 10}


def answered(url: str, timeout_s: float = 2.0) -> bytes | None:
    """The body of a 200 answer to a GET of ``url``; None for any other answer or none (a
    server still starting). An error answer is closed here: urllib's HTTPError holds its
    connection open until collected, which a test then meets as an unclosed socket."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            return bytes(response.read()) if response.status == 200 else None
    except urllib.error.HTTPError as error:
        error.close()
        return None
    except OSError:
        return None


# -- the servers (run as subprocesses of this benchmark) ---------------------------------------

def serve_bare(port: int, answer_file: str) -> None:
    answer = msgspec.json.decode(Path(answer_file).read_bytes())
    encoder = msgspec.json.Encoder()

    async def search(request: web.Request) -> web.Response:
        msgspec.json.decode(await request.read())
        return web.Response(body=encoder.encode(answer), content_type="application/json")

    app = web.Application()
    app.router.add_post("/v1/aliases/products/search", search)
    app.router.add_get("/readyz", lambda _: asyncio.sleep(0, web.json_response({})))
    import uvloop

    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None,
                loop=uvloop.new_event_loop())


def serve_sink(port: int) -> None:
    """An OTLP/HTTP trace receiver that reads each export and drops it: the collector the traced
    rows export to, so exporting costs the proxy what it costs against a real one."""
    async def traces(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(body=b"", content_type="application/x-protobuf")

    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_post("/v1/traces", traces)
    app.router.add_get("/readyz", lambda _: asyncio.sleep(0, web.json_response({})))
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


def serve_full(port: int, data_dir: str, settings: list[str]) -> None:
    """``settings`` are extra NAME=VALUE pairs for the proxy's environment."""
    from proxy.cli.serve import run
    from proxy.config import load_settings

    environ = {k: v for k, v in os.environ.items() if k.startswith("OTEL_")}
    environ |= {name: value for name, _, value in (pair.partition("=") for pair in settings)}
    run(load_settings({**environ, "EMBEDSHIFT_DATA_DIR": data_dir,
                       "EMBEDSHIFT_PORT": str(port)}), environ)


# -- load ------------------------------------------------------------------------------------

async def fixed_rate(send: Callable[[int], Awaitable[None]], rate: float, seconds: float
                     ) -> tuple[float, float, float]:
    """p50 ms, p99 ms, achieved requests/s. Latency runs from the send: at these rates nothing
    queues, and timing from the due time would add the generator's own timer lateness (about
    a millisecond on asyncio) to every row alike."""
    latencies: list[float] = []
    start = time.perf_counter()
    total = int(rate * seconds)

    async def one(i: int) -> None:
        due = start + i / rate
        await asyncio.sleep(max(0.0, due - time.perf_counter()))
        sent = time.perf_counter()
        await send(i)
        latencies.append(time.perf_counter() - sent)

    await asyncio.gather(*(one(i) for i in range(total)))
    elapsed = time.perf_counter() - start
    p50, p99 = np.percentile(latencies, [50, 99]) * 1000
    return float(p50), float(p99), total / elapsed


def body(i: int) -> dict[str, object]:
    """The i-th request: 10 queries x 50 users, so both caches are warm after 500."""
    return {**BODY, "query": QUERIES[i % len(QUERIES)], "user_id": f"u{i % 50}"}


def wrk(script: str, url: str, seconds: float, connections: int,
        cpus: set[int] | None = None) -> tuple[float, str]:
    """Requests/s of ``wrk`` (one thread, closed loop) running the Lua ``script`` against
    ``url`` (on ``cpus`` only, if given), and what it said of non-2xx answers."""
    path = Path(tempfile.mkstemp(suffix=".lua")[1])
    path.write_text(script)
    try:
        output = subprocess.run(
            [*pinned(cpus), "wrk", "-t1", f"-c{connections}", f"-d{seconds:.0f}s", "-s",
             str(path), url], capture_output=True, text=True, check=True,
            timeout=seconds + 60).stdout
    finally:
        path.unlink()
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", output)[1])  # type: ignore[index]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    return rps, f"{errors[1]} non-2xx" if errors else "all 2xx"


def wrk_throughput(url: str, seconds: int, connections: int) -> tuple[float, str]:
    bodies = ", ".join(json.dumps(json.dumps(body(i))) for i in range(500))
    return wrk('wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n'
               f"local bodies = {{{bodies}}}\nlocal i = 0\n"
               "request = function()\n  i = i % #bodies + 1\n"
               "  return wrk.format(nil, nil, nil, bodies[i])\nend\n", url, seconds, connections)


async def python_throughput(url: str, seconds: float, connections: int) -> tuple[float, str]:
    count = 0
    deadline = time.perf_counter() + seconds
    async with aiohttp.ClientSession() as session:
        async def worker() -> None:
            nonlocal count
            while time.perf_counter() < deadline:
                async with session.post(url, json=BODY) as response:
                    await response.read()
                count += 1

        await asyncio.gather(*(worker() for _ in range(connections)))
    return count / seconds, "python client (may be the bottleneck)"


async def sequential(send: Callable[[int], Awaitable[None]], count: int = 500) -> float:
    """p50 ms of ``count`` requests sent one after another (no idle gaps between them)."""
    latencies = []
    for i in range(count):
        start = time.perf_counter()
        await send(i)
        latencies.append(time.perf_counter() - start)
    return float(np.median(latencies) * 1000)


async def http_phase(url: str, rate: float, seconds: float
                     ) -> tuple[tuple[float, float, float], float]:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=64)) as session:
        async def send(i: int) -> None:
            async with session.post(url, json=body(i)) as response:
                assert response.status == 200, await response.text()
                await response.read()

        for i in range(500):  # warm the caches and connections
            await send(i)
        return await fixed_rate(send, rate, seconds), await sequential(send)


def pinned(cpus: set[int] | None) -> list[str]:
    """A command prefix that runs the command (and all it starts) only on ``cpus``."""
    return [] if cpus is None else ["taskset", "-c", ",".join(map(str, sorted(cpus)))]


def start(args: list[str], ready_url: str, timeout_s: float = 300,
          cpus: set[int] | None = None, tree: Path | None = None) -> subprocess.Popen[bytes]:
    """A server of this module in its own process, once it answers ``ready_url``; ``cpus``:
    the only CPUs it (and every thread it starts) may run on; ``tree``: another checkout to
    run it from (its ``proxy`` and ``loadtest`` ahead of this one's: a baseline)."""
    environ = None if tree is None else {**os.environ, "PYTHONPATH": str(tree)}
    process = subprocess.Popen([*pinned(cpus), sys.executable, "-m", "loadtest.bench_proxy",
                                *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               cwd=tree, env=environ)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if answered(ready_url) is not None:
            return process
        time.sleep(0.3)
    process.kill()
    raise SystemExit(f"server {args[0]} did not become ready in {timeout_s:.0f}s")


def stop_serving(process: subprocess.Popen[bytes], data_dir: str) -> None:
    """A ``serve-full`` process stopped, the Redis it started with it, its folder removed."""
    process.terminate()
    process.wait(timeout=30)
    from proxy.state.redis_server import EmbeddedRedis

    EmbeddedRedis(Path(data_dir), os.environ).stop()
    shutil.rmtree(data_dir, ignore_errors=True)


async def store_phase(data_dir: str, rate: float, seconds: float
                      ) -> tuple[tuple[float, float, float], float]:
    from proxy.models.catalog import default_rollout, resolve
    from proxy.models.encoders import OnnxModel
    from proxy.vectors.edge import EdgeStore

    version = default_rollout("products").version("v1")
    model = OnnxModel(resolve(version, Path(data_dir) / "models"))
    vectors = model.embed(QUERIES)
    store = EdgeStore(Path(data_dir) / "qdrant")

    async def send(i: int) -> None:
        await store.search(version.target, vectors[i % len(QUERIES)], 10, None, True)

    for i in range(50):
        await send(i)
    try:
        return await fixed_rate(send, rate, seconds), await sequential(send)
    finally:
        await store.close()


SINK = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT=http://127.0.0.1:{sink}/v1/traces"
PROXIES = {  # name: (what the row says, extra settings; {sink}: the trace receiver's port)
    "full": ("(a) proxy, as configured by default (no exporter)", []),
    "sampled": ("(a) proxy, 10% of traces exported (parentbased_traceidratio)",
                [SINK, "OTEL_TRACES_SAMPLER=parentbased_traceidratio",
                 "OTEL_TRACES_SAMPLER_ARG=0.1"]),
    "traced": ("(a) proxy, every trace exported (parentbased_always_on)", [SINK]),
    "uncached": ("(a) proxy, result cache off: every query searched",
                 ["EMBEDSHIFT_RESULT_CACHE_TTL_S=0"]),
}
Row = tuple[tuple[float, float, float], float]


def measure(args: argparse.Namespace) -> None:
    data_dir = tempfile.mkdtemp(prefix="embedshift-bench-")
    answer_file = str(Path(data_dir) / "answer.json")
    rows: dict[str, Row] = {}
    ceilings: dict[str, tuple[float, str]] = {}
    sink_port = free_port()
    sink = start(["serve-sink", str(sink_port)], f"http://127.0.0.1:{sink_port}/readyz")
    servers = [(name, ["serve-full", data_dir, *(s.format(sink=sink_port) for s in settings)])
               for name, (_, settings) in PROXIES.items()] + [("bare", ["serve-bare", answer_file])]
    for name, server_args in servers:
        port = free_port()
        url = f"http://127.0.0.1:{port}/v1/aliases/products/search"
        process = start([*server_args[:1], str(port), *server_args[1:]],
                        f"http://127.0.0.1:{port}/readyz")
        try:
            if name == "full":
                with urllib.request.urlopen(urllib.request.Request(
                        url, json.dumps(BODY).encode(), {"Content-Type": "application/json"}),
                        timeout=10) as response:
                    Path(answer_file).write_bytes(response.read())
            rows[name] = asyncio.run(http_phase(url, args.rate, args.seconds))
            ceilings[name] = throughput(url, args)
        finally:
            process.terminate()
            process.wait(timeout=30)
    sink.terminate()
    sink.wait(timeout=30)
    from proxy.state.redis_server import EmbeddedRedis

    EmbeddedRedis(Path(data_dir), os.environ).stop()
    rows["store"] = asyncio.run(store_phase(data_dir, args.rate, args.seconds))
    shutil.rmtree(data_dir, ignore_errors=True)
    report(rows, ceilings, args)


@contextlib.contextmanager
def worktree(reference: str) -> Iterator[Path]:
    """A checkout of the commit ``reference`` (a git worktree), removed afterwards: a baseline
    to run beside this tree."""
    folder = Path(tempfile.mkdtemp(prefix="embedshift-baseline-")) / "tree"
    subprocess.run(["git", "worktree", "add", "--detach", str(folder), reference], check=True,
                   capture_output=True)
    try:
        yield folder
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(folder)], check=False,
                       capture_output=True)


def against_baseline(reference: str, args: argparse.Namespace) -> None:
    """Max req/s with warm caches of the proxy as configured by default and with 10% of traces
    exported, served by ``reference`` and by this tree in turns, and of the bare endpoint in
    each round: before and after in one run, each as a share of the bare endpoint's."""
    names = ("full", "sampled")
    found: dict[str, list[float]] = {f"{n} {t}": [] for n in names for t in ("before", "after")}
    found["bare"] = []
    sink_port = free_port()
    sink = start(["serve-sink", str(sink_port)], f"http://127.0.0.1:{sink_port}/readyz")
    folders = {t: tempfile.mkdtemp(prefix=f"embedshift-bench-{t}-") for t in ("before", "after")}
    answer_file = str(Path(folders["after"]) / "answer.json")
    try:
        with worktree(reference) as tree:
            for _ in range(args.rounds):
                for name in names:
                    for which, where in (("before", tree), ("after", None)):
                        settings = [s.format(sink=sink_port) for s in PROXIES[name][1]]
                        found[f"{name} {which}"].append(_closed_loop(
                            ["serve-full", folders[which], *settings], args, where,
                            answer_file if which == "after" else None))
                found["bare"].append(_closed_loop(["serve-bare", answer_file], args, None, None))
    finally:
        sink.terminate()
        sink.wait(timeout=30)
        from proxy.state.redis_server import EmbeddedRedis

        for folder in folders.values():
            EmbeddedRedis(Path(folder), os.environ).stop()
            shutil.rmtree(folder, ignore_errors=True)
    print(f"max req/s, warm caches, wrk -c{args.connections} {args.seconds:g} s, {args.rounds} "
          f"rounds in turns; before = {reference}, after = this tree\n")
    bare = statistics.median(found["bare"])
    for key, values in found.items():
        label = key if key == "bare" else f"{PROXIES[key.split()[0]][0]}, {key.split()[1]}"
        print(f"{label:72} {' '.join(f'{v:6.0f}' for v in values)}   median "
              f"{statistics.median(values):6.0f} = {statistics.median(values) / bare:4.0%} of bare")


def _closed_loop(server: list[str], args: argparse.Namespace, tree: Path | None,
                 answer_file: str | None) -> float:
    """One server started, warmed with 500 queries (its answer kept in ``answer_file``, for
    the bare endpoint), and its closed-loop req/s."""
    port = free_port()
    url = f"http://127.0.0.1:{port}/v1/aliases/products/search"
    process = start([server[0], str(port), *server[1:]], f"http://127.0.0.1:{port}/readyz",
                    tree=tree)
    try:
        async def warm() -> bytes:
            first = b""
            async with aiohttp.ClientSession() as session:
                for i in range(500):
                    async with session.post(url, json=body(i)) as response:
                        first = first or await response.read()
            return first
        answer = asyncio.run(warm())
        if answer_file is not None:
            Path(answer_file).write_bytes(answer)
        return throughput(url, args)[0]
    finally:
        process.terminate()
        process.wait(timeout=30)


def throughput(url: str, args: argparse.Namespace) -> tuple[float, str]:
    if shutil.which("wrk") is not None:
        return wrk_throughput(url, int(args.seconds), args.connections)
    return asyncio.run(python_throughput(url, args.seconds, args.connections))


def report(rows: dict[str, Row], ceilings: dict[str, tuple[float, str]],
           args: argparse.Namespace) -> None:
    print(f"fixed rate {args.rate:g} req/s for {args.seconds:g}s each, then 500 requests back to "
          f"back; max throughput closed loop, {args.connections} connections, {args.seconds:g}s;"
          " warm caches, loopback\n")
    print(f"{'path':58} {'p50 ms':>7} {'p99 ms':>7} {'b2b p50':>8} {'max req/s':>10} "
          f"{'of (c)':>7}")
    names = {key: label for key, (label, _) in PROXIES.items()}
    names |= {"store": "(b) store alone, precomputed vectors",
              "bare": "(c) bare aiohttp endpoint, the proxy's answer"}
    bare = ceilings["bare"][0]
    for key in (*PROXIES, "store", "bare"):
        (p50, p99, _), back_to_back = rows[key]
        rps = f"{ceilings[key][0]:10.0f} {ceilings[key][0] / bare:7.0%}" if key in ceilings \
            else f"{'-':>10} {'-':>7}"
        print(f"{names[key]:58} {p50:7.3f} {p99:7.3f} {back_to_back:8.3f} {rps}")
    problems = [f"{key}: {text}" for key, (_, text) in ceilings.items() if text != "all 2xx"]
    print(f"\nthroughput runs: {'; '.join(problems) or 'every response 2xx'}")
    overhead = rows["uncached"][0][0] - rows["store"][0][0]
    busy = rows["uncached"][1] - rows["store"][1]
    print(f"proxy overhead at p50, (a, result cache off) - (b): {overhead:.3f} ms at the fixed "
          f"rate (target < 0.5 ms: {'met' if overhead < 0.5 else 'NOT met'}), {busy:.3f} ms "
          "back to back")
    for key in PROXIES:
        ratio = ceilings[key][0] / bare
        target = (f" (target >= 40% with warm caches and 10% of traces: "
                  f"{'met' if ratio >= 0.4 else 'NOT met'})") if key == "sampled" else ""
        print(f"{names[key]}: {ratio:.0%} of the ceiling{target}")


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "serve-bare":
        serve_bare(int(sys.argv[2]), sys.argv[3])
        return
    if len(sys.argv) > 1 and sys.argv[1] == "serve-sink":
        serve_sink(int(sys.argv[2]))
        return
    if len(sys.argv) > 1 and sys.argv[1] == "serve-full":
        serve_full(int(sys.argv[2]), sys.argv[3], sys.argv[4:])
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=200)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--baseline", metavar="COMMIT",
                        help="only max req/s of (a) by default and with 10%% of traces, served "
                             "by COMMIT and by this tree in turns, and (c)")
    parser.add_argument("--rounds", type=int, default=3, help="turns each with --baseline")
    args = parser.parse_args()
    if args.baseline:
        against_baseline(args.baseline, args)
        return
    measure(args)


if __name__ == "__main__":
    main()
