"""Soak: new queries at a fixed rate for minutes, watching the proxy's memory, descriptors and p99.

    uv run python -m loadtest.soak [--minutes 10] [--rate 50] [--every 10]

Runs ``embedshift serve`` on embedded defaults as its own process (models linked from
``.embedshift/models`` when built there), then sends every ``1/rate`` s a query it has never sent
(a word pair and a counter), from one of 1000 users, over loopback, open loop. Every ``--every`` s
it samples the proxy's resident memory (``/proc/<pid>/status``), its open descriptors
(``/proc/<pid>/fd``) and the window's p99 and errors: a JSON line when stdout is not a terminal, a
table row when it is. Both caches hold 10,000 entries by default, so they fill after 10,000 new
queries (200 s at 50/s); after that, memory should be flat. The summary compares each figure at
the end with the first window after the caches filled (the run's own baseline), fits the memory
slope after filling, and draws the curves.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import numpy as np

from loadtest.bench_proxy import start
from loadtest.ports import free_port
from proxy.state.redis_server import EmbeddedRedis

REPO = Path(__file__).resolve().parents[1]
CACHE_ENTRIES = 10_000  # EMBEDSHIFT_CACHE_SIZE and EMBEDSHIFT_RESULT_CACHE_SIZE defaults
WORDS = ["warm", "light", "waterproof", "kids", "winter", "trail", "fast", "quiet", "cheap",
         "sturdy", "jacket", "tent", "stove", "boots", "lamp", "filter", "helmet", "pack",
         "gloves", "mat"]
BARS = " ▁▂▃▄▅▆▇█"


@dataclass
class Window:
    at_s: float
    sent: int
    rss_mb: float
    fds: int
    p99_ms: float
    errors: int


@dataclass
class Soak:
    url: str
    pid: int
    latencies: list[float] = field(default_factory=list)
    errors: int = 0

    async def send(self, session: aiohttp.ClientSession, i: int) -> None:
        rng = random.Random(i)
        body = {"query": f"{rng.choice(WORDS)} {rng.choice(WORDS)} {i}",
                "user_id": f"user-{rng.randrange(1000)}", "limit": 10}
        sent = time.perf_counter()
        try:
            async with session.post(self.url, json=body) as response:
                await response.read()
                if response.status != 200:
                    self.errors += 1
        except aiohttp.ClientError:
            self.errors += 1
        self.latencies.append(time.perf_counter() - sent)

    def sample(self, at_s: float, sent: int) -> Window:
        status = Path(f"/proc/{self.pid}/status").read_text()
        rss_kb = next(int(line.split()[1]) for line in status.splitlines()
                      if line.startswith("VmRSS:"))
        fds = len(os.listdir(f"/proc/{self.pid}/fd"))
        p99 = float(np.percentile(self.latencies, 99) * 1000) if self.latencies else 0.0
        window = Window(round(at_s, 1), sent, round(rss_kb / 1024, 1), fds, round(p99, 2),
                        self.errors)
        self.latencies, self.errors = [], 0
        return window


async def run(url: str, pid: int, minutes: float, rate: float, every_s: float) -> list[Window]:
    soak, windows = Soak(url, pid), []
    total = int(minutes * 60 * rate)
    tasks: set[asyncio.Task[None]] = set()
    connector = aiohttp.TCPConnector(limit=64)
    async with aiohttp.ClientSession(connector=connector) as session:
        start_t = time.perf_counter()
        next_sample = every_s
        for i in range(total):
            await asyncio.sleep(max(0.0, start_t + i / rate - time.perf_counter()))
            task = asyncio.create_task(soak.send(session, i))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            elapsed = time.perf_counter() - start_t
            if elapsed >= next_sample:
                windows.append(soak.sample(elapsed, i + 1))
                show(windows[-1])
                next_sample += every_s
        await asyncio.gather(*tasks)
        windows.append(soak.sample(time.perf_counter() - start_t, total))
        show(windows[-1])
    return windows


def show(window: Window) -> None:
    if sys.stdout.isatty():
        print(f"{window.at_s:7.0f}s {window.sent:8d} sent {window.rss_mb:8.1f} MB "
              f"{window.fds:5d} fds  p99 {window.p99_ms:7.2f} ms  {window.errors} errors",
              flush=True)
    else:
        print(json.dumps(window.__dict__), flush=True)


def spark(values: list[float]) -> str:
    low, high = min(values), max(values)
    span = (high - low) or 1.0
    return "".join(BARS[1 + round((v - low) / span * (len(BARS) - 2))] for v in values)


def summarize(windows: list[Window], rate: float) -> None:
    filled = next((w for w in windows if w.sent >= CACHE_ENTRIES), None)
    last = windows[-1]
    print(f"\nsoak: {last.sent} new queries at {rate:g}/s over {last.at_s:.0f} s, "
          f"{sum(w.errors for w in windows)} errors")
    for name, unit, values in (("memory", "MB", [w.rss_mb for w in windows]),
                               ("descriptors", "", [float(w.fds) for w in windows]),
                               ("p99", "ms", [w.p99_ms for w in windows])):
        print(f"  {name:12} {spark(values)}  {min(values):.1f}..{max(values):.1f} {unit}")
    if filled is None:
        print("  the caches never filled: run longer or faster to see the flat part")
        return
    after = [w for w in windows if w.at_s >= filled.at_s]
    slope = (np.polyfit([w.at_s for w in after], [w.rss_mb for w in after], 1)[0] * 60
             if len(after) > 1 else 0.0)
    print(f"  caches full at {filled.at_s:.0f} s ({filled.sent} queries); from then to the end "
          f"(baseline = that window):")
    print(f"    memory       {filled.rss_mb:.1f} -> {last.rss_mb:.1f} MB "
          f"(x{last.rss_mb / filled.rss_mb:.3f}), slope {slope:+.2f} MB/min")
    print(f"    descriptors  {filled.fds} -> {last.fds} (x{last.fds / max(filled.fds, 1):.2f})")
    print(f"    p99          {filled.p99_ms:.1f} -> {last.p99_ms:.1f} ms "
          f"(x{last.p99_ms / max(filled.p99_ms, 1e-9):.2f})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--rate", type=float, default=50.0, help="new queries per second")
    parser.add_argument("--every", type=float, default=10.0, help="seconds between samples")
    args = parser.parse_args()
    data_dir = Path(tempfile.mkdtemp(prefix="embedshift-soak-"))
    built = REPO / ".embedshift" / "models"
    if built.is_dir():
        (data_dir / "models").symlink_to(built)
    port = free_port()
    process = start(["serve-full", str(port), str(data_dir)], f"http://127.0.0.1:{port}/readyz")
    try:
        windows = asyncio.run(run(f"http://127.0.0.1:{port}/v1/aliases/products/search",
                                  process.pid, args.minutes, args.rate, args.every))
    finally:
        process.terminate()
        process.wait(timeout=60)
        EmbeddedRedis(data_dir, os.environ).stop()
    summarize(windows, args.rate)


if __name__ == "__main__":
    main()
