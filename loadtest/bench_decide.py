"""How fast routing is: ns per decide() and per bucket, beside a pure-Python murmur3 baseline.

    uv run python -m loadtest.bench_decide [--n 200000] [--repeat 7]

Every figure is the best of ``--repeat`` runs over the same inputs in this one process, so the
ratios hold on a noisy machine even when absolute times drift.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

from loadtest.murmur3_reference import murmur3_32
from rollout_rules.bucket import NORMALISER, bucket
from rollout_rules.decide import Context, decide
from rollout_rules.model import parse_rollout

DOCUMENT = {
    "alias": "products",
    "versions": [
        {"name": "v1", "model": "m/l3", "dimensions": 384, "target": {"collection": "p_v1"}},
        {"name": "v2", "model": "m/l6", "dimensions": 384, "target": {"collection": "p_v2"}},
    ],
    "stable": "v1", "candidate": "v2", "percent": 25,
    "overrides": {"users": {f"qa-{i}": "v2" for i in range(20)},
                  "tenants": {f"tenant-{i}": "v1" for i in range(20)}},
}


def pure_python_bucket(group: str, key: str) -> int:
    """What a dependency-free client computes (Unleash's pure-Python path, 10,000 buckets)."""
    return murmur3_32(f"{group}:{key}".encode()) % NORMALISER + 1


def best_ns(fn: Callable[[], None], calls: int, repeat: int) -> float:
    timings = []
    for _ in range(repeat):
        start = time.perf_counter_ns()
        fn()
        timings.append(time.perf_counter_ns() - start)
    return min(timings) / calls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200_000)
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    rollout = parse_rollout(DOCUMENT)
    keys = [f"user-{i:07d}" for i in range(args.n)]
    contexts = [Context(user_id=k, tenant="shop-1") for k in keys]

    def run_decide() -> None:
        for context in contexts:
            decide(rollout, context, 0.97)

    def run_bucket() -> None:
        for key in keys:
            bucket("products", key)

    def run_pure() -> None:
        for key in keys:
            pure_python_bucket("products", key)

    def run_loop() -> None:
        for _key in keys:
            pass

    loop = best_ns(run_loop, args.n, args.repeat)
    rows = [("decide() (bucket path, 40 overrides)", best_ns(run_decide, args.n, args.repeat)),
            ("bucket() via mmh3", best_ns(run_bucket, args.n, args.repeat)),
            ("bucket() pure-Python murmur3 (baseline)", best_ns(run_pure, args.n, args.repeat))]
    baseline = rows[-1][1]
    print(f"{args.n} calls, best of {args.repeat}; loop overhead {loop:.0f} ns included")
    print(f"{'':42} {'ns/call':>9} {'vs baseline':>12}")
    for name, ns in rows:
        print(f"{name:42} {ns:9.0f} {baseline / ns:11.1f}x")
    print(f"target: decide() under 2000 ns -> {'met' if rows[0][1] < 2000 else 'NOT met'}")


if __name__ == "__main__":
    main()
