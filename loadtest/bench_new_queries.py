"""Every query new: the proxy's throughput against its physical limit, the encoder, in one run:

    uv run python -m loadtest.bench_new_queries [--seconds 10] [--connections 64]
    uv run python -m loadtest.bench_new_queries --baseline COMMIT [--rounds 3]

Each query is text never seen before, so each costs one forward pass; the demo's stable version
(paraphrase-MiniLM-L3-v2) answers all of them (the candidate is at 0%).

(1) the raw encoder in-process, on the threads the proxy gives it: the model loaded as the proxy
    loads it (one intra-op thread per run) and as many runs at once as the proxy's encode pool
    has workers, each encoding batches of 32 new texts back to back: the most these threads can
    encode, the ceiling;
(2) the same model behind the proxy's micro-batcher (``QueryEncoder``), 256 texts in flight;
(3) ``embedshift serve`` on embedded defaults in its own process, over HTTP, closed loop with
    ``wrk`` (Debian package) and a Lua script that makes every body's text new: end to end.

Each runs in two layouts: every CPU shared by all (the load generator competes with the proxy,
as on one box), and, with two CPUs or more, the load generator alone on the first CPU and the
proxy (and its ceiling) on the others: the proxy's own cost against the encoder's. It prints
each figure and its ratio to (1) of its layout, and the CPU the proxy process spent during (3)
in its event loop and in its other threads (from /proc). With ``--baseline``, only (3): served
by that commit (a git worktree of it, run with this environment) and by this tree in turns, in
each layout, so a change is measured against what it changed on the same machine at the same
time. Loopback only, bounded in time.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import shutil
import statistics
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import NamedTuple

from loadtest.bench_proxy import start, worktree, wrk
from loadtest.ports import free_port
from proxy.models.encoders import OnnxModel, QueryEncoder, default_threads

WORDS = ("warm", "tent", "boots", "stove", "trail", "winter", "kids", "fleece", "helmet", "snow",
         "water", "filter", "night", "rocky", "light", "wool", "rope", "lamp", "map", "cup")
MODELS = Path(".embedshift") / "models"


FIRST = 10_000_000


def text(i: int) -> str:
    """The i-th new query: three words and two numbers, as many tokens as a short search. Each
    run takes the texts in the same order from ``FIRST`` on, (3)'s Lua script too: the same
    texts, so the same tokens to encode."""
    return (f"{WORDS[i % 20]} {WORDS[(i // 20) % 20]} {WORDS[(i // 400) % 20]} for trip {i} "
            f"{i * 7919 % 1_000_000}")


def raw_encoder(model: OnnxModel, seconds: float, workers: int) -> float:
    """Texts/s with ``workers`` threads each encoding batches of 32 back to back."""
    done = [0] * workers
    deadline = time.perf_counter() + seconds
    numbers = itertools.count(FIRST)  # shared: next() on it is atomic under the GIL

    def work(slot: int) -> None:
        while time.perf_counter() < deadline:
            model.embed([text(next(numbers)) for _ in range(32)])
            done[slot] += 32

    threads = [threading.Thread(target=work, args=(slot,)) for slot in range(workers)]
    start_time = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sum(done) / (time.perf_counter() - start_time)


async def micro_batched(model: OnnxModel, seconds: float, workers: int,
                        in_flight: int = 256) -> float:
    with ThreadPoolExecutor(max_workers=workers) as pool:
        encoder = QueryEncoder(model, pool, cache_size=0)
        count = 0
        deadline = time.perf_counter() + seconds
        numbers = itertools.count(FIRST)

        async def client() -> None:
            nonlocal count
            while time.perf_counter() < deadline:
                await encoder.encode(text(next(numbers)))
                count += 1

        begun = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(in_flight)))
        return count / (time.perf_counter() - begun)


WRK_SCRIPT = """wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local words = {%s}
local i = %d - 2  -- wrk calls request() once before sending: that text is never sent
request = function()
  i = i + 1
  local q = words[i %% 20 + 1] .. " " .. words[math.floor(i / 20) %% 20 + 1] .. " " ..
            words[math.floor(i / 400) %% 20 + 1] .. " for trip " .. i .. " " ..
            (i * 7919) %% 1000000
  return wrk.format(nil, nil, nil,
    '{"query": "' .. q .. '", "user_id": "u' .. (i %% 1000) .. '", "limit": 10}')
end
"""


def cpu_seconds(pid: int, thread: int | None = None) -> float:
    """CPU time (user + system) of a process, or of one of its threads, so far."""
    path = f"/proc/{pid}/task/{thread}/stat" if thread is not None else f"/proc/{pid}/stat"
    fields = Path(path).read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def end_to_end(seconds: float, connections: int, proxy_cpus: set[int] | None,
               load_cpus: set[int] | None, tree: Path | None = None
               ) -> tuple[float, str, tuple[float, float]]:
    """Queries/s, what wrk said of errors, and the share of a CPU the proxy process used
    meanwhile in its event loop (the main thread) and in all its other threads."""
    data_dir = tempfile.mkdtemp(prefix="embedshift-newq-")
    if MODELS.is_dir():
        shutil.copytree(MODELS, Path(data_dir) / "models", ignore=shutil.ignore_patterns(".*"))
    port = free_port()
    process = start(["serve-full", str(port), data_dir, "EMBEDSHIFT_RESULT_CACHE_TTL_S=0"],
                    f"http://127.0.0.1:{port}/readyz", cpus=proxy_cpus, tree=tree)
    script = WRK_SCRIPT % (", ".join(f'"{w}"' for w in WORDS), FIRST)
    pid = process.pid  # taskset execs the server: same process
    try:
        loop_before, all_before, begun = cpu_seconds(pid, pid), cpu_seconds(pid), time.time()
        rps, note = wrk(script, f"http://127.0.0.1:{port}/v1/aliases/products/search", seconds,
                        connections, load_cpus)
        elapsed = time.time() - begun
        loop = (cpu_seconds(pid, pid) - loop_before) / elapsed
        others = (cpu_seconds(pid) - all_before) / elapsed - loop
    finally:
        process.terminate()
        process.wait(timeout=30)
        from proxy.state.redis_server import EmbeddedRedis

        EmbeddedRedis(Path(data_dir), {}).stop()
        shutil.rmtree(data_dir, ignore_errors=True)
    return rps, note, (loop, others)


class Layout(NamedTuple):
    """Where each part runs: ``proxy`` CPUs for the encoder, the micro-batcher and ``serve``
    (whose encode pool sizes itself to them); ``load`` CPUs for wrk (None: anywhere)."""

    title: str
    proxy: set[int]
    load: set[int] | None


def layouts(everything: set[int]) -> list[Layout]:
    """Shared: all CPUs for all, the load generator competing with the proxy, as on one box.
    Split (with 2 CPUs or more): the load generator alone on the first CPU, the proxy and its
    ceiling on the rest, so the figure is the proxy's own cost against the encoder's."""
    shared = Layout(f"all {len(everything)} CPUs, shared with the load generator",
                    everything, None)
    if len(everything) < 2:
        return [shared]
    first = min(everything)
    rest = everything - {first}
    return [shared, Layout(f"CPU {first} for the load generator alone, "
                           f"{len(rest)} CPU{'s' * (len(rest) > 1)} for the proxy", rest,
                           {first})]


class Result(NamedTuple):
    rows: list[tuple[str, float]]  # (label, queries/s) of (1), (2), (3)
    loop: float  # share of a CPU the proxy's event loop used during (3)
    others: float  # and all its other threads (encoders, engine, exporter)
    per_query_ms: float  # the event loop's CPU per query of (3)


def measure(layout: Layout, args: argparse.Namespace) -> Result:
    """(1), (2), (3) of one layout, the main thread pinned to the layout's proxy CPUs while (1)
    and (2) run (threads started meanwhile inherit it)."""
    everything = os.sched_getaffinity(0)
    os.sched_setaffinity(0, layout.proxy)
    try:
        workers = default_threads()
        model = OnnxModel(MODELS / "paraphrase-MiniLM-L3-v2", threads=1)
        raw_encoder(model, 1.0, workers)  # the first runs grow onnxruntime's arena: not timed
        raw = raw_encoder(model, args.seconds, workers)
        batched = asyncio.run(micro_batched(model, args.seconds, workers))
    finally:
        os.sched_setaffinity(0, everything)
    http, note, (loop, others) = end_to_end(args.seconds, args.connections, layout.proxy,
                                            layout.load)
    return Result([(f"(1) raw encoder, {workers} worker{'s' * (workers > 1)} x 1 thread, "
                    "batches of 32 (ceiling)", raw),
                   ("(2) the proxy's micro-batcher in-process, 256 in flight", batched),
                   (f"(3) serve over HTTP, wrk -c{args.connections} ({note})", http)],
                  loop, others, loop / http * 1000)


def against_baseline(reference: str, args: argparse.Namespace) -> None:
    """(3) served by the commit ``reference`` and by this tree, alternating ``--rounds`` times
    per layout in one run: the event loop's CPU per query and queries/s, before and after."""
    with worktree(reference) as folder:
        print(f"(3) before ({reference}) and after (this tree), alternating, {args.rounds} "
              f"rounds of {args.seconds:g} s each, wrk -c{args.connections}")
        for layout in layouts(os.sched_getaffinity(0)):
            runs: dict[str, list[tuple[float, float]]] = {"before": [], "after": []}
            for _ in range(args.rounds):
                for name, tree in (("before", folder), ("after", None)):
                    rps, _note, (loop, _others) = end_to_end(
                        args.seconds, args.connections, layout.proxy, layout.load, tree)
                    runs[name].append((loop / rps * 1000, rps))
            print(f"{layout.title}:")
            for name, found in runs.items():
                print(f"  {name:6} loop ms a query {' '.join(f'{ms:.3f}' for ms, _ in found):24}"
                      f" queries/s {' '.join(f'{q:.0f}' for _, q in found)}")
            before = statistics.median(ms for ms, _ in runs["before"])
            after = statistics.median(ms for ms, _ in runs["after"])
            print(f"  the event loop's CPU per query, median: {before:.3f} -> {after:.3f} ms "
                  f"({after / before - 1:+.0%}; target -40%)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--baseline", metavar="COMMIT",
                        help="only (3), served by COMMIT and by this tree in turns")
    parser.add_argument("--rounds", type=int, default=3, help="turns each with --baseline")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("needs wrk (apt-get install wrk) for the end-to-end run")
    if args.baseline:
        against_baseline(args.baseline, args)
        return
    results = [(layout, measure(layout, args)) for layout in layouts(os.sched_getaffinity(0))]
    print(f"every query new, paraphrase-MiniLM-L3-v2, {args.seconds:g} s per row\n")
    print(f"{'path':64} {'queries/s':>10} {'of (1)':>7}")
    for layout, result in results:
        print(f"{layout.title}:")
        raw = result.rows[0][1]
        for label, value in result.rows:
            print(f"  {label:62} {value:>10.0f} {value / raw:>7.0%}")
        print(f"  during (3) the proxy's event loop used {result.loop:.0%} of a CPU "
              f"({result.per_query_ms:.2f} ms a query), its other threads {result.others:.0%}")
    print()
    for layout, result in results:
        ratio = result.rows[2][1] / result.rows[0][1]
        print(f"end to end, {layout.title}: {ratio:.0%} of the raw encoder "
              f"(target >= 90%: {'met' if ratio >= 0.9 else 'NOT met'})")


if __name__ == "__main__":
    main()
