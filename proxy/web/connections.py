"""Who may hold a connection: a cap the file-descriptor limit can honour, a share per client, and
idle connections given up before anyone is refused.

``connection_cap`` sizes the cap from the process's descriptor limit, keeping a reserve for what
else the proxy opens (Redis, the engine's files, models, logs) and for connections being refused:
a proxy that accepted up to a limit it cannot reach would meet ``EMFILE`` and its clients resets.

``Connections`` admits each new connection (``admit``): within the client's share and the cap it
is let in; over either, the longest-idle connection (of that client, or of anyone) is shed to make
room, else the longest-stalled (a request still arriving, no byte for ``STALL_S``); only when none
is idle or stalled is the new one refused, with a JSON 503 (``proxy.web.server``). A connection is
idle from its opening or its last answer until its next byte arrives.
"""

from __future__ import annotations

import enum
from collections import Counter
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Protocol

FD_RESERVE_MIN = 96
"""Descriptors kept back from connections, at the least; a limit's eighth when that is more. A
proxy at rest holds about 25 (Redis, the engine's files, models, logs); half the reserve may go
to connections being refused (``refusal_room``)."""


def fd_reserve(fd_limit: int) -> int:
    return max(FD_RESERVE_MIN, fd_limit // 8)


def fd_wanted(max_connections: int) -> int:
    """The descriptor limit that lets ``max_connections`` be honoured whole."""
    wanted = max(max_connections + FD_RESERVE_MIN, -(-max_connections * 8 // 7))
    while wanted - fd_reserve(wanted) < max_connections:
        wanted += 1
    return wanted


def connection_cap(max_connections: int, fd_limit: int) -> int:
    """Open connections allowed: the configured number, or what the descriptor limit leaves after
    its reserve when that is fewer (at least one)."""
    return max(1, min(max_connections, fd_limit - fd_reserve(fd_limit)))


def refusal_room(fd_limit: int, open_connections: int) -> int:
    """How many connections being refused may be open at once: what is left of the limit once
    the open connections and half the reserve are counted (at least one)."""
    return max(1, fd_limit - fd_reserve(fd_limit) // 2 - open_connections)


def per_client_cap(cap: int, configured: int) -> int:
    """Connections one client address may hold: as configured (``0``: half the cap)."""
    return min(cap, configured) if configured else max(1, cap // 2)


STALL_S = 1.0
"""A connection whose request (head or body) has had no byte for this long is stalled: when no
connection is idle, the longest-stalled is shed for a new client, so a thousand unfinished bodies
cannot keep everyone else out until their timeout."""


class Held(Hashable, Protocol):
    """An open connection as admission sees it."""

    @property
    def client(self) -> str: ...

    @property
    def idle_since(self) -> float | None:
        """When it last fell idle, or ``None`` while a request is arriving or being answered."""

    @property
    def waiting_since(self) -> float | None:
        """While its request is still arriving, when its last byte came; else ``None``."""

    def shed(self) -> None:
        """Give up its place for a new connection: leave the bookkeeping, and close (or, where
        the server owns the socket, let it close)."""


class Verdict(enum.Enum):
    ADMIT = "admit"
    SHED = "shed"  # admitted, once the returned idle connection is closed
    REFUSE = "refuse"


class Reason(enum.Enum):
    MAX_CONNECTIONS = "max_connections"
    PER_CLIENT = "max_connections_per_client"


@dataclass(frozen=True, slots=True)
class Admission:
    verdict: Verdict
    reason: Reason | None = None
    shed: Held | None = None


@dataclass
class Connections:
    """The open connections, by client. Pure bookkeeping: closing is the caller's."""

    cap: int
    per_client: int
    _open: dict[Held, None] = field(default_factory=dict)  # insertion ordered
    _by_client: Counter[str] = field(default_factory=Counter)

    def __len__(self) -> int:
        return len(self._open)

    def count(self, client: str) -> int:
        return self._by_client[client]

    def admit(self, client: str, now: float | None = None) -> Admission:
        """Whether a new connection from ``client`` may be let in, and whom it displaces (with
        ``now``, a stalled connection too when none is idle)."""
        if self._by_client[client] >= self.per_client:
            return self._make_room(Reason.PER_CLIENT, client, now)
        if len(self._open) >= self.cap:
            return self._make_room(Reason.MAX_CONNECTIONS, None, now)
        return Admission(Verdict.ADMIT)

    def add(self, held: Held) -> None:
        if held not in self._open:
            self._open[held] = None
            self._by_client[held.client] += 1

    def remove(self, held: Held) -> None:
        if self._open.pop(held, False) is None:
            self._by_client[held.client] -= 1
            if self._by_client[held.client] <= 0:
                del self._by_client[held.client]

    def _make_room(self, reason: Reason, client: str | None, now: float | None) -> Admission:
        mine = [held for held in self._open if client is None or held.client == client]
        idle = [held for held in mine if held.idle_since is not None]
        if idle:
            return Admission(Verdict.SHED, reason, min(idle, key=_idle_since))
        stalled = [held for held in mine if now is not None and held.waiting_since is not None
                   and now - held.waiting_since >= STALL_S]
        if stalled:
            return Admission(Verdict.SHED, reason, min(stalled, key=_waiting_since))
        return Admission(Verdict.REFUSE, reason)


def _idle_since(held: Held) -> float:
    return held.idle_since or 0.0


def _waiting_since(held: Held) -> float:
    return held.waiting_since or 0.0
