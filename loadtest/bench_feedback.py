"""What remembering answers for their feedback costs the search path, and Redis:

    uv run python -m loadtest.bench_feedback [--rounds 3] [--seconds 10] [--connections 32]

(a) ``embedshift serve`` on embedded defaults, warm caches (``bench_proxy``'s 10 queries x 50
    users), closed loop with ``wrk``: answers not remembered (``EMBEDSHIFT_FEEDBACK_TTL_S=0``)
    and remembered (the default), alternating in rounds so the machine's drift hits both alike.
    Printed: each round's req/s and the CPU the proxy and its Redis spent per request (read
    from /proc: steadier than req/s on a shared machine), their ratios, and the medians.
(b) Redis memory per million remembered answers: 100,000 answers of 10 integer ids each written
    through the answer log into a redis-server of its own, measured with ``MEMORY USAGE`` of
    its keys, scaled.

Loopback only; every phase is bounded in time.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import aiohttp

from loadtest.bench_proxy import body, start, throughput
from loadtest.ports import free_port
from rollout_rules.online import Answer


def _cpu_s(pids: list[int]) -> float:
    """CPU seconds (user + system) the processes have used so far."""
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15)
    return total / os.sysconf("SC_CLK_TCK")


def _redis_of(data_dir: str) -> list[int]:
    """The embedded redis-server's pid (it serves the proxy, so its CPU is the proxy's too)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                line = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if data_dir in line and "redis.conf" in line:
                found.append(int(entry.name))
    return found


def one_run(data_dir: str, settings: list[str], args: argparse.Namespace
            ) -> tuple[float, float]:
    """One ``serve`` warmed with 500 queries, then closed loop: its req/s, and the CPU the
    proxy and its Redis spent per request (microseconds)."""
    port = free_port()
    url = f"http://127.0.0.1:{port}/v1/aliases/products/search"
    process = start(["serve-full", str(port), data_dir, *settings],
                    f"http://127.0.0.1:{port}/readyz")
    try:
        async def warm() -> None:
            async with aiohttp.ClientSession() as session:
                for i in range(500):
                    async with session.post(url, json=body(i)) as response:
                        await response.read()

        asyncio.run(warm())
        pids = [process.pid, *_redis_of(data_dir)]
        before = _cpu_s(pids)
        rps = throughput(url, args)[0]
        spent = _cpu_s(pids) - before
        return rps, spent / (rps * args.seconds) * 1e6
    finally:
        process.terminate()
        process.wait(timeout=30)


def search_path(args: argparse.Namespace) -> None:
    data_dir = tempfile.mkdtemp(prefix="embedshift-bench-feedback-")
    rows: dict[str, list[tuple[float, float]]] = {"off": [], "on": []}
    try:
        for n in range(args.rounds):
            for name, settings in (("off", ["EMBEDSHIFT_FEEDBACK_TTL_S=0"]), ("on", [])):
                rows[name].append(one_run(data_dir, settings, args))
            (off_rps, off_cpu), (on_rps, on_cpu) = rows["off"][-1], rows["on"][-1]
            print(f"round {n + 1}: not remembered {off_rps:,.0f} req/s, {off_cpu:.0f} us CPU "
                  f"a request; remembered {on_rps:,.0f} req/s, {on_cpu:.0f} us; CPU ratio "
                  f"{on_cpu / off_cpu:.3f}, req/s ratio {on_rps / off_rps:.3f}", flush=True)
    finally:
        from proxy.state.redis_server import EmbeddedRedis

        EmbeddedRedis(Path(data_dir), {}).stop()
        shutil.rmtree(data_dir, ignore_errors=True)
    cpu = [on[1] / off[1] for on, off in zip(rows["on"], rows["off"], strict=True)]
    rps = [on[0] / off[0] for on, off in zip(rows["on"], rows["off"], strict=True)]
    print(f"(a) remembered / not remembered, medians of {args.rounds} rounds: CPU a request "
          f"(proxy and its Redis) {statistics.median(cpu):.3f} (spread {min(cpu):.3f} to "
          f"{max(cpu):.3f}); req/s {statistics.median(rps):.3f} (spread {min(rps):.3f} to "
          f"{max(rps):.3f})")


async def memory(count: int = 100_000) -> None:
    from proxy.config import Settings
    from proxy.state.answers import RedisAnswerLog
    from proxy.state.client import connect
    from proxy.state.redis_server import EmbeddedRedis

    folder = Path(tempfile.mkdtemp(prefix="embedshift-bench-answers-"))
    server = EmbeddedRedis(folder, {})
    server.start()
    client = connect(Settings(), server.url)
    try:
        log = RedisAnswerLog(client, "bench", cap=10 * count)
        now = int(time.time() * 1000)
        for start in range(0, count, 1000):
            await log.remember([(f"{n:032x}", Answer(
                alias="products", version="v2", revision=7, user=f"user-{n % 5000}",
                tenant=None, at_ms=now, docs=[str(n * 10 + k) for k in range(10)]))
                for n in range(start, start + 1000)], ttl_s=3600)
        used = sum([await client.memory_usage(key, samples=0) or 0
                    for key in (log.base, f"{log.base}:until")])
        print(f"(b) {count:,} remembered answers (10 integer ids each) hold {used / 1e6:.1f} MB "
              f"of Redis: {used / count * 1e6 / 1e6:,.0f} MB per million answers "
              f"({used / count:.0f} bytes each)")
    finally:
        await client.aclose()
        server.stop()
        shutil.rmtree(folder, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--connections", type=int, default=32)
    args = parser.parse_args()
    asyncio.run(memory())
    search_path(args)


if __name__ == "__main__":
    main()
