"""How long `embedshift status` takes, against the interpreter starting and doing nothing:

    uv run python -m loadtest.bench_cli [--runs 15]

A real redis-server (the embedded one) holds one declared alias; each row runs a fresh process
``--runs`` times, interleaved so a noisy machine slows every row alike, and prints the median
and the fastest run (#22's target: `status` under 0.3 s on an idle machine).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from proxy.state.redis_server import EmbeddedRedis


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=15)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        server = EmbeddedRedis(Path(folder), os.environ)
        server.start()
        try:
            env = {**os.environ, "REDIS_URL": server.url, "EMBEDSHIFT_ACTOR": "bench"}
            cli = [sys.executable, "-m", "proxy.cli.main"]
            subprocess.run([*cli, "init", "products"], env=env, check=True,
                           capture_output=True)
            rows = {"python -c pass (baseline)": [sys.executable, "-c", "pass"],
                    "embedshift status products": [*cli, "status", "products"],
                    "embedshift history products": [*cli, "history", "products"]}
            times: dict[str, list[float]] = {name: [] for name in rows}
            for _ in range(args.runs):
                for name, command in rows.items():
                    began = time.perf_counter()
                    subprocess.run(command, env=env, check=True, capture_output=True)
                    times[name].append(time.perf_counter() - began)
        finally:
            server.stop()
    base = statistics.median(times["python -c pass (baseline)"])
    print(f"{'command':32} {'median s':>9} {'fastest s':>10} {'x baseline':>11}")
    for name, found in times.items():
        median = statistics.median(found)
        print(f"{name:32} {median:9.3f} {min(found):10.3f} {median / base:11.1f}")


if __name__ == "__main__":
    main()
