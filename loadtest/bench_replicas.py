"""Throughput of one proxy replica against two, side by side in one run:

    uv run python -m loadtest.bench_replicas [--seconds 10] [--rounds 3]

Each replica is ``embedshift serve`` on embedded defaults with the demo, in a data folder of its
own (replicas share nothing but Redis and Qdrant, and on embedded defaults each has its own, so
this measures the replicas, not a shared store). ``wrk`` drives the demo's searches closed loop
(10 queries x 50 users: warm caches, the proxy's own cost per query), 32 connections in all:
against one replica, then split over two at once; rounds alternate. On this machine's two cores
the load generator and the replicas share the cores: the figure says what a second replica on
the same cores gives, not what one on its own cores would. Traffic goes only to 127.0.0.1.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
from concurrent.futures import ThreadPoolExecutor

from loadtest.bench_proxy import start, wrk_throughput
from loadtest.ports import free_port


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    folders = [tempfile.mkdtemp(prefix="bench-replica-") for _ in range(2)]
    ports = [free_port() for _ in folders]
    servers = [start(["serve-full", str(port), folder], f"http://127.0.0.1:{port}/readyz")
               for port, folder in zip(ports, folders, strict=True)]
    urls = [f"http://127.0.0.1:{port}/v1/aliases/products/search" for port in ports]
    one, two = [], []
    try:
        for url in urls:  # warm both
            wrk_throughput(url, 3, 8)
        for _ in range(args.rounds):
            rps, said = wrk_throughput(urls[0], args.seconds, 32)
            one.append(rps)
            with ThreadPoolExecutor(2) as pool:
                both = list(pool.map(lambda url: wrk_throughput(url, args.seconds, 16), urls))
            two.append(sum(rps for rps, _ in both))
            print(f"round: one replica {rps:.0f} req/s ({said}); two replicas "
                  f"{two[-1]:.0f} req/s ({' + '.join(f'{r:.0f}' for r, _ in both)}; "
                  f"{', '.join(s for _, s in both)})", flush=True)
    finally:
        for server in servers:
            server.terminate()
            server.wait(30)
        for folder in folders:
            shutil.rmtree(folder, ignore_errors=True)
    print(f"\nreplicas, 32 connections in all, {args.rounds} rounds of {args.seconds} s, warm "
          "caches")
    print(f"  one replica   {statistics.median(one):8.0f} req/s (median)")
    print(f"  two replicas  {statistics.median(two):8.0f} req/s (median, summed)")
    print(f"  ratio         {statistics.median(t / o for t, o in zip(two, one, strict=True)):8.2f}")


if __name__ == "__main__":
    main()
