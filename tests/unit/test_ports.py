"""The tests' port picker: a range per worker, below the ephemeral range, never a busy port."""

from __future__ import annotations

import itertools
import socket

import pytest

from loadtest.ports import PORTS_VARIABLE, ephemeral_low, free_port, worker_range


def test_workers_get_disjoint_ranges_below_the_ephemeral_range() -> None:
    ranges = [worker_range(w, 4, low=20_000, high=32_768) for w in range(4)]
    assert ranges[0][0] == 20_000 and ranges[-1][1] <= 32_768
    assert all(a[1] <= b[0] for a, b in itertools.pairwise(ranges))
    assert worker_range(0, 1, high=32_768) == (20_000, 32_768)
    assert ephemeral_low("/nonexistent") == 32_768


def _two_in_a_row() -> tuple[socket.socket, int]:
    """A listening socket on a port whose next port is free too."""
    while True:
        taken = socket.socket()
        taken.bind(("127.0.0.1", 0))
        port = int(taken.getsockname()[1])
        with socket.socket() as after:
            try:
                after.bind(("127.0.0.1", port + 1))
            except OSError:
                taken.close()
                continue
        taken.listen()
        return taken, port


def test_a_port_in_use_is_skipped(monkeypatch: pytest.MonkeyPatch) -> None:
    taken, port = _two_in_a_row()
    with taken:
        monkeypatch.setenv(PORTS_VARIABLE, f"{port}-{port + 2}")
        assert {free_port() for _ in range(6)} == {port + 1}
        monkeypatch.setenv(PORTS_VARIABLE, f"{port}-{port + 1}")
        with pytest.raises(OSError, match="no free loopback port"):
            free_port()
