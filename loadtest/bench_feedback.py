"""What remembering answers for their feedback costs the search path, and Redis:

    uv run python -m loadtest.bench_feedback [--rounds 15] [--seconds 3] [--connections 32]

(a) ``embedshift serve`` on embedded defaults, warm caches (``bench_proxy``'s 10 queries x 50
    users), closed loop with ``wrk``: answers not remembered (``EMBEDSHIFT_FEEDBACK_TTL_S=0``)
    and remembered (the default), both running at once and loaded in turn, a few seconds each,
    round after round, so the machine's drift falls on both alike. Printed: req/s and the CPU
    the proxy and its Redis spent per request (read from /proc), and the medians and quartiles
    of the per-round ratios.
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
import subprocess
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
            if data_dir in line and "redis" in line:
                found.append(int(entry.name))
    return found


def _serve(data_dir: str, settings: list[str]) -> tuple[subprocess.Popen[bytes], str]:
    """``serve`` on ``data_dir``, warmed with 500 queries; the process and its search URL."""
    port = free_port()
    url = f"http://127.0.0.1:{port}/v1/aliases/products/search"
    process = start(["serve-full", str(port), data_dir, *settings],
                    f"http://127.0.0.1:{port}/readyz")

    async def warm() -> None:
        async with aiohttp.ClientSession() as session:
            for i in range(500):
                async with session.post(url, json=body(i)) as response:
                    await response.read()

    asyncio.run(warm())
    return process, url


def search_path(args: argparse.Namespace) -> None:
    """Both proxies up at once (each with its own Redis, the models shared), loaded in turn
    for ``--seconds`` each, ``--rounds`` times: the machine's drift falls on both alike."""
    folders = {name: tempfile.mkdtemp(prefix=f"embedshift-bench-feedback-{name}-")
               for name in ("off", "on")}
    servers: dict[str, tuple[subprocess.Popen[bytes], str]] = {}
    rows: dict[str, list[tuple[float, float]]] = {"off": [], "on": []}
    redis_us: dict[str, list[float]] = {"off": [], "on": []}
    try:
        servers["off"] = _serve(folders["off"], ["EMBEDSHIFT_FEEDBACK_TTL_S=0"])
        (Path(folders["on"]) / "models").symlink_to(Path(folders["off"]) / "models")
        servers["on"] = _serve(folders["on"], [])
        pids = {name: [process.pid, *_redis_of(folders[name])]
                for name, (process, _) in servers.items()}
        for _ in range(args.rounds):
            for name in ("off", "on"):
                before = _cpu_s(pids[name])
                redis_before = _cpu_s(pids[name][1:])
                rps = throughput(servers[name][1], args)[0]
                rows[name].append((rps, (_cpu_s(pids[name]) - before) /
                                   (rps * args.seconds) * 1e6))
                redis_us[name].append((_cpu_s(pids[name][1:]) - redis_before) /
                                      (rps * args.seconds) * 1e6)
    finally:
        from proxy.state.redis_server import EmbeddedRedis

        for process, _ in servers.values():
            process.terminate()
            process.wait(timeout=30)
        for folder in folders.values():
            EmbeddedRedis(Path(folder), {}).stop()
            shutil.rmtree(folder, ignore_errors=True)
    cpu = [on[1] / off[1] for on, off in zip(rows["on"], rows["off"], strict=True)]
    speed = [on[0] / off[0] for on, off in zip(rows["on"], rows["off"], strict=True)]
    for name in ("off", "on"):
        print(f"    {'not remembered' if name == 'off' else 'remembered':<15} req/s median "
              f"{statistics.median(r for r, _ in rows[name]):,.0f}, CPU a request (proxy and "
              f"its Redis) median {statistics.median(c for _, c in rows[name]):.0f} us, of "
              f"which Redis {statistics.median(redis_us[name]):.0f} us")
    print(f"(a) remembered / not remembered, {args.rounds} rounds of {args.seconds:g} s each: "
          f"CPU a request median {statistics.median(cpu):.3f} (quartiles "
          f"{_quartiles(cpu)}), req/s median {statistics.median(speed):.3f} (quartiles "
          f"{_quartiles(speed)})")


def _quartiles(values: list[float]) -> str:
    q = statistics.quantiles(values, n=4)
    return f"{q[0]:.3f} to {q[2]:.3f}"


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
                tenant=None, at_ms=now, docs=tuple(n * 10 + k for k in range(10))))
                for n in range(start, start + 1000)], ttl_s=3600)
        used = sum([await client.memory_usage(key, samples=0) or 0
                    for key in (log.base, f"{log.base}:batches", f"{log.base}:held")])
        print(f"(b) {count:,} remembered answers (10 integer ids each) hold {used / 1e6:.1f} MB "
              f"of Redis: {used / count * 1e6 / 1e6:,.0f} MB per million answers "
              f"({used / count:.0f} bytes each)")
    finally:
        await client.aclose()
        server.stop()
        shutil.rmtree(folder, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--seconds", type=float, default=3)
    parser.add_argument("--connections", type=int, default=32)
    args = parser.parse_args()
    asyncio.run(memory())
    search_path(args)


if __name__ == "__main__":
    main()
