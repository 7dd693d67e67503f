"""What remembering answers for their feedback costs the search path, and Redis:

    uv run python -m loadtest.bench_feedback [--rounds 3] [--seconds 10] [--connections 32]

(a) ``embedshift serve`` on embedded defaults, warm caches (``bench_proxy``'s 10 queries x 50
    users), closed loop with ``wrk``: answers not remembered (``EMBEDSHIFT_FEEDBACK_TTL_S=0``)
    and remembered (the default), alternating in rounds so the machine's drift hits both alike.
    Printed: each round's req/s and the ratio, and the median ratio.
(b) Redis memory per million remembered answers: 100,000 answers of 10 integer ids each written
    through the answer log into a redis-server of its own, measured with ``MEMORY USAGE`` of
    its keys, scaled.

Loopback only; every phase is bounded in time.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from loadtest.bench_proxy import _closed_loop
from rollout_rules.online import Answer


def search_path(args: argparse.Namespace) -> None:
    data_dir = tempfile.mkdtemp(prefix="embedshift-bench-feedback-")
    rows: dict[str, list[float]] = {"off": [], "on": []}
    try:
        for n in range(args.rounds):
            for name, settings in (("off", ["EMBEDSHIFT_FEEDBACK_TTL_S=0"]), ("on", [])):
                rows[name].append(_closed_loop(["serve-full", data_dir, *settings], args,
                                               None, None))
            print(f"round {n + 1}: not remembered {rows['off'][-1]:,.0f} req/s, remembered "
                  f"{rows['on'][-1]:,.0f} req/s, ratio {rows['on'][-1] / rows['off'][-1]:.3f}",
                  flush=True)
    finally:
        from proxy.state.redis_server import EmbeddedRedis

        EmbeddedRedis(Path(data_dir), {}).stop()
        shutil.rmtree(data_dir, ignore_errors=True)
    ratios = [on / off for on, off in zip(rows["on"], rows["off"], strict=True)]
    print(f"(a) remembered / not remembered, median of {args.rounds} rounds: "
          f"{statistics.median(ratios):.3f} (spread {min(ratios):.3f} to {max(ratios):.3f}); "
          f"req/s medians {statistics.median(rows['off']):,.0f} and "
          f"{statistics.median(rows['on']):,.0f}")


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
