"""Loopback ports for the servers the tests and benchmarks start.

A port the kernel picks (bind to 0) comes from its ephemeral range, the same range every
outgoing connection takes its local port from: between the pick and the server's own bind,
a client connecting anywhere may take it. So with ``EMBEDSHIFT_PORTS=LO-HI`` (the tests set
it, each parallel test worker a range of its own, below the ephemeral range) ports come from
that range in turn, each checked free by a bind; without it, the kernel picks.
"""

from __future__ import annotations

import itertools
import os
import socket
import threading

PORTS_VARIABLE = "EMBEDSHIFT_PORTS"
_lock = threading.Lock()
_turns: dict[tuple[int, int], itertools.count[int]] = {}


def free_port() -> int:
    """A loopback port nobody listens on now."""
    span = os.environ.get(PORTS_VARIABLE)
    if not span:
        return _kernels_pick()
    low, high = (int(part) for part in span.split("-", 1))
    with _lock:
        # from a place of this process's own: a server process picking ports of its own
        # does not walk the same ports as the test that started it
        turns = _turns.setdefault((low, high), itertools.count(os.getpid() % (high - low)))
        for _ in range(high - low):
            port = low + next(turns) % (high - low)
            if _bindable(port):
                return port
    raise OSError(f"no free loopback port in {PORTS_VARIABLE}={span}")


def worker_range(worker: int, workers: int, low: int = 20_000, high: int | None = None
                 ) -> tuple[int, int]:
    """Worker ``worker``'s share (of ``workers``) of the ports from ``low`` up to the kernel's
    ephemeral range."""
    top = high if high is not None else ephemeral_low()
    share = (top - low) // max(1, workers)
    return low + worker * share, low + (worker + 1) * share


def ephemeral_low(path: str = "/proc/sys/net/ipv4/ip_local_port_range") -> int:
    try:
        with open(path) as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32_768  # Linux's default


def _bindable(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _kernels_pick() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])
