"""Scenarios under load, on embedded defaults, with a Markdown report and plots:

    uv run python -m loadtest.scenario ramp [--rate 40] [--seconds 60] [--out loadtest-report]

Starts ``embedshift serve`` (the demo alias ``products``) as its own process on 127.0.0.1 and
sends it searches open loop at a fixed rate: each request leaves at its scheduled time whether
or not earlier ones have answered, and its latency is counted from that scheduled time, so a
stall shows as the queue it causes (no coordinated omission). User ids follow a Zipf law over
10,000 users; 80% of queries are new text (three words drawn from a vocabulary), the rest
repeat ten popular ones. While the load runs the scenario acts through the admin API:

- steady:   the candidate at 20% throughout;
- ramp:     0% -> 10% -> 25% -> 50% -> 100%, a step every fifth of the run;
- rollback: the candidate at 25%, rolled back halfway;
- backfill: the candidate at 100% (the default gate holds it at 0%: the demo's v2 holds 60% of
            the catalogue), then the backfill starts at a fifth of the run and the gate opens.

Every scenario but ``backfill`` first backfills the demo's v2 (before the load), so the gate
lets the candidate have what the scenario gives it.

The report (``report.md``) gives per-version latency percentiles and the share of traffic,
and plots (PNG, matplotlib) latency per version over time, traffic share over time and errors,
with every scenario action marked. Bounded in time and count, loopback only.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np

from loadtest.bench_proxy import QUERIES, answered
from loadtest.ports import free_port

TOKEN = "scenario-admin-token"
_VOCABULARY = """warm waterproof light tent boots jacket stove trail winter summer kids fleece
helmet snow water filter night rocky fast recycled cycling goggles ultralight down wool hiking
camping climbing paddling running lamp rope map compass bottle pack sleeping bag mat chair table
cup knife gloves hat socks shorts shirt rain wind sun"""
WORDS = tuple(_VOCABULARY.split())
USERS = 10_000
ACTIONS: dict[str, list[tuple[float, str, dict[str, object]]]] = {
    "steady": [(0.0, "percent", {"percent": 20})],
    "ramp": [(0.0, "percent", {"percent": 0}), (0.2, "percent", {"percent": 10}),
             (0.4, "percent", {"percent": 25}), (0.6, "percent", {"percent": 50}),
             (0.8, "percent", {"percent": 100})],
    "rollback": [(0.0, "percent", {"percent": 25}),
                 (0.5, "rollback", {"reason": "scenario: rollback under load"})],
    "backfill": [(0.0, "percent", {"percent": 100}),
                 (0.2, "backfill", {"workers": 1, "rate": None})],
}


@dataclass
class Sample:
    due: float  # seconds since the load began
    latency_s: float
    status: int
    version: str


@dataclass
class Run:
    scenario: str
    rate: float
    seconds: float
    samples: list[Sample] = field(default_factory=list)
    events: list[tuple[float, str]] = field(default_factory=list)


def request_body(rng: np.random.Generator) -> dict[str, object]:
    user = int(min(rng.zipf(1.2), USERS))
    if rng.random() < 0.8:
        query = " ".join(rng.choice(WORDS, size=3))
    else:
        query = QUERIES[int(rng.integers(len(QUERIES)))]
    return {"query": query, "user_id": f"user-{user}", "limit": 10}


async def load(url: str, run: Run, seed: int = 7) -> None:
    """Open loop: request i leaves at start + i / rate; its latency runs from then."""
    rng = np.random.default_rng(seed)
    total = int(run.rate * run.seconds)
    bodies = [request_body(rng) for _ in range(total)]
    connector = aiohttp.TCPConnector(limit=512)
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        start = time.perf_counter()

        async def one(i: int) -> None:
            due = i / run.rate
            await asyncio.sleep(max(0.0, start + due - time.perf_counter()))
            try:
                async with session.post(url, json=bodies[i]) as response:
                    answer = await response.json()
                    status = response.status
            except (aiohttp.ClientError, TimeoutError):
                answer, status = {}, 0
            run.samples.append(Sample(due, time.perf_counter() - start - due, status,
                                      str(answer.get("model_version", "error"))))

        await asyncio.gather(*(one(i) for i in range(total)), act(session, url, run, start))


async def act(session: aiohttp.ClientSession, url: str, run: Run, start: float) -> None:
    base = url.split("/v1/", 1)[0] + "/admin/aliases/products"
    headers = {"Authorization": f"Bearer {TOKEN}", "X-Embedshift-Actor": "scenario"}
    for at, action, body in ACTIONS[run.scenario]:
        await asyncio.sleep(max(0.0, start + at * run.seconds - time.perf_counter()))
        async with session.post(f"{base}/{action}", json=body, headers=headers) as response:
            outcome = "" if response.status < 400 else f" (refused: {response.status})"
        label = f"{action} {body.get('percent', '')}".strip() + outcome
        run.events.append((time.perf_counter() - start, label))


async def backfill_first(base: str, timeout_s: float = 300) -> None:
    """Re-encode the rest of the demo into v2 and wait until it is done."""
    headers = {"Authorization": f"Bearer {TOKEN}", "X-Embedshift-Actor": "scenario"}
    deadline = time.monotonic() + timeout_s
    async with aiohttp.ClientSession(headers=headers) as session:
        async with session.post(f"{base}/backfill", json={}) as response:
            response.raise_for_status()
        while time.monotonic() < deadline:
            async with session.get(f"{base}/backfill") as response:
                state = (await response.json())["state"]
            if state == "done":
                return
            if state == "failed":
                raise SystemExit("the demo's backfill failed before the scenario")
            await asyncio.sleep(0.2)
    raise SystemExit(f"the demo's backfill was not done in {timeout_s:.0f} s")


# -- the report (pure: samples in, figures and text out) -------------------------------------

def percentiles(latencies: Sequence[float]) -> tuple[float, float, float]:
    p50, p95, p99 = np.percentile(np.asarray(latencies) * 1000, [50, 95, 99])
    return float(p50), float(p95), float(p99)


def per_second(run: Run, version: str | None = None) -> dict[int, list[Sample]]:
    bins: dict[int, list[Sample]] = {}
    for sample in run.samples:
        if version is None or sample.version == version:
            bins.setdefault(int(sample.due), []).append(sample)
    return bins


def versions(run: Run) -> list[str]:
    return sorted({s.version for s in run.samples if s.status == 200})


def summary(run: Run) -> str:
    ok = [s for s in run.samples if s.status == 200]
    lines = [f"# Scenario `{run.scenario}`: {len(run.samples)} searches at {run.rate:g}/s for "
             f"{run.seconds:g} s", "",
             f"Open loop (latency from each request's scheduled time), Zipf users, 80% new "
             f"queries; errors: {len(run.samples) - len(ok)}.", "",
             "| version | searches | share | p50 ms | p95 ms | p99 ms |",
             "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for version in versions(run):
        mine = [s.latency_s for s in ok if s.version == version]
        p50, p95, p99 = percentiles(mine)
        lines.append(f"| {version} | {len(mine)} | {len(mine) / max(1, len(ok)):.1%} | "
                     f"{p50:.1f} | {p95:.1f} | {p99:.1f} |")
    p50, p95, p99 = percentiles([s.latency_s for s in ok] or [0.0])
    lines += [f"| all | {len(ok)} | 100% | {p50:.1f} | {p95:.1f} | {p99:.1f} |", "",
              "Actions: " + "; ".join(f"{label} at {t:.1f} s" for t, label in run.events), "",
              "![latency per version](latency.png)", "", "![traffic share](share.png)", "",
              "![errors](errors.png)", ""]
    return "\n".join(lines)


def plot(run: Run, out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def mark(axis: Any) -> None:
        for t, label in run.events:
            axis.axvline(t, color="grey", linestyle=":", linewidth=1)
            axis.annotate(label, (t, 1.0), xycoords=("data", "axes fraction"), rotation=90,
                          va="top", ha="right", fontsize=7, color="grey")

    paths = []
    fig, axis = plt.subplots(figsize=(9, 4))
    for version in versions(run):
        bins = per_second(run, version)
        seconds = sorted(bins)
        for q, style in ((50, "-"), (99, "--")):
            axis.plot(seconds, [np.percentile([s.latency_s * 1000 for s in bins[t]], q)
                                for t in seconds], style, label=f"{version} p{q}")
    axis.set(xlabel="seconds", ylabel="latency ms", title="Latency per version (1 s bins)")
    axis.legend(fontsize=8)
    mark(axis)
    paths.append(_save(fig, out / "latency.png"))
    fig, axis = plt.subplots(figsize=(9, 3))
    bins = per_second(run)
    seconds = sorted(bins)
    for version in versions(run):
        axis.plot(seconds, [sum(s.version == version for s in bins[t]) / len(bins[t])
                            for t in seconds], label=version)
    axis.set(xlabel="seconds", ylabel="share", title="Traffic share per version",
             ylim=(-0.02, 1.05))
    axis.legend(fontsize=8)
    mark(axis)
    paths.append(_save(fig, out / "share.png"))
    fig, axis = plt.subplots(figsize=(9, 2.5))
    axis.plot(seconds, [sum(s.status != 200 for s in bins[t]) for t in seconds], color="red")
    axis.set(xlabel="seconds", ylabel="errors/s", title="Errors (non-200 answers)")
    mark(axis)
    paths.append(_save(fig, out / "errors.png"))
    return paths


def _save(fig: Any, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# -- running it ------------------------------------------------------------------------------

def start_proxy(data_dir: Path, port: int, models: Path, timeout_s: float = 300
                ) -> subprocess.Popen[bytes]:
    """``embedshift serve`` with the demo, its models copied from ``models`` when built there
    (else it builds them)."""
    if models.is_dir():
        shutil.copytree(models, data_dir / "models", ignore=shutil.ignore_patterns(".*"))
    environ = {**os.environ, "EMBEDSHIFT_DATA_DIR": str(data_dir), "EMBEDSHIFT_PORT": str(port),
               "EMBEDSHIFT_ADMIN_TOKEN": TOKEN}
    process = subprocess.Popen([sys.executable, "-m", "proxy.cli.main", "serve"], env=environ,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        body = answered(f"http://127.0.0.1:{port}/readyz")
        if body is not None and json.loads(body).get("ready"):
            return process
        time.sleep(0.5)
    process.kill()
    raise SystemExit(f"the proxy did not become ready in {timeout_s:.0f} s")


def run_scenario(scenario: str, rate: float, seconds: float, out: Path,
                 models: Path = Path(".embedshift") / "models") -> Run:
    out.mkdir(parents=True, exist_ok=True)
    data_dir = Path(tempfile.mkdtemp(prefix="embedshift-scenario-"))
    port = free_port()
    process = start_proxy(data_dir, port, models)
    run = Run(scenario, rate, seconds)
    try:
        if scenario != "backfill":
            asyncio.run(backfill_first(f"http://127.0.0.1:{port}/admin/aliases/products"))
        asyncio.run(load(f"http://127.0.0.1:{port}/v1/aliases/products/search", run))
    finally:
        process.terminate()
        process.wait(timeout=60)
        from proxy.state.redis_server import EmbeddedRedis

        EmbeddedRedis(data_dir, os.environ).stop()
        shutil.rmtree(data_dir, ignore_errors=True)
    plot(run, out)
    (out / "report.md").write_text(summary(run))
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("scenario", choices=sorted(ACTIONS))
    parser.add_argument("--rate", type=float, default=40.0, help="searches per second (40)")
    parser.add_argument("--seconds", type=float, default=60.0, help="how long (60, at most 600)")
    parser.add_argument("--out", default="loadtest-report", help="the report's folder")
    args = parser.parse_args()
    if not 0 < args.seconds <= 600 or not 0 < args.rate <= 2000:
        parser.error("--seconds from 0 to 600 and --rate from 0 to 2000: a bounded load test")
    run = run_scenario(args.scenario, args.rate, args.seconds, Path(args.out))
    print(summary(run))
    print(f"report: {Path(args.out) / 'report.md'}")


if __name__ == "__main__":
    main()
