"""Admission: a cap the descriptor limit can honour, a share per client, idle ones shed first."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from proxy.web.connections import (
    STALL_S,
    Connections,
    Reason,
    Verdict,
    connection_cap,
    fd_wanted,
    per_client_cap,
    refusal_room,
)


@pytest.mark.parametrize(("configured", "fd_limit", "cap"), [
    (1000, 256, 160),  # `ulimit -n 256`: 96 kept back
    (1000, 1024, 896),  # a common default soft limit: an eighth kept back
    (1000, 65536, 1000),  # room enough: as configured
    (1000, 40, 1),  # never none
    (100, 20000, 100),
])
def test_the_cap_is_what_the_descriptor_limit_can_honour(configured: int, fd_limit: int,
                                                         cap: int) -> None:
    assert connection_cap(configured, fd_limit) == cap


@pytest.mark.parametrize("configured", [1, 100, 1000, 50_000])
def test_the_limit_asked_for_honours_the_configured_number_whole(configured: int) -> None:
    assert connection_cap(configured, fd_wanted(configured)) == configured


def test_half_the_reserve_and_what_connections_leave_may_hold_refusals() -> None:
    assert refusal_room(256, 160) == 48
    assert refusal_room(256, 80) == 128
    assert refusal_room(100, 100) == 1


def test_a_clients_share_is_half_the_cap_unless_configured() -> None:
    assert per_client_cap(192, 0) == 96
    assert per_client_cap(1, 0) == 1
    assert per_client_cap(192, 10) == 10
    assert per_client_cap(192, 500) == 192


@dataclass(eq=False)
class Conn:
    client: str
    idle_since: float | None
    waiting_since: float | None = None

    def shed(self) -> None:
        """Closing is the site's: admission only names whom to shed."""


def test_within_the_cap_and_the_share_a_connection_is_admitted() -> None:
    door = Connections(cap=4, per_client=2)
    assert door.admit("a").verdict is Verdict.ADMIT
    door.add(Conn("a", None))
    assert door.admit("a").verdict is Verdict.ADMIT


def test_past_the_cap_the_longest_idle_connection_is_shed_else_the_new_one_refused() -> None:
    door = Connections(cap=3, per_client=3)
    busy, newer_idle, older_idle = Conn("a", None), Conn("b", 20.0), Conn("c", 10.0)
    for conn in (busy, newer_idle, older_idle):
        door.add(conn)
    admission = door.admit("d")
    assert (admission.verdict, admission.reason, admission.shed) == \
        (Verdict.SHED, Reason.MAX_CONNECTIONS, older_idle)
    door.remove(older_idle)
    door.remove(newer_idle)
    door.add(Conn("d", None))
    door.add(Conn("e", None))
    refused = door.admit("f")
    assert (refused.verdict, refused.reason, refused.shed) == \
        (Verdict.REFUSE, Reason.MAX_CONNECTIONS, None)


def test_past_its_share_a_client_gives_up_only_its_own_idle_connection() -> None:
    door = Connections(cap=10, per_client=2)
    others_idle, mine_busy, mine_idle = Conn("b", 1.0), Conn("a", None), Conn("a", 5.0)
    for conn in (others_idle, mine_busy, mine_idle):
        door.add(conn)
    assert door.admit("a").shed is mine_idle
    mine_idle.idle_since = None
    refused = door.admit("a")
    assert (refused.verdict, refused.reason) == (Verdict.REFUSE, Reason.PER_CLIENT)
    assert door.admit("b").verdict is Verdict.ADMIT


def test_removing_is_counted_once() -> None:
    door = Connections(cap=2, per_client=2)
    conn = Conn("a", None)
    door.add(conn)
    door.add(conn)
    door.remove(conn)
    door.remove(conn)  # shed, then lost: the second is a no-op
    assert len(door) == 0 and door.count("a") == 0


def test_with_none_idle_the_longest_stalled_request_is_shed_a_fresh_one_never() -> None:
    """A thousand unfinished bodies cannot keep a new client out until their timeout."""
    door = Connections(cap=3, per_client=3)
    answering = Conn("a", None)  # its request whole, being answered: never shed
    fresh, stalled, older = Conn("a", None, 99.5), Conn("b", None, 90.0), Conn("b", None, 80.0)
    for conn in (answering, fresh, stalled, older):
        door.add(conn)
    assert door.admit("c").verdict is Verdict.REFUSE  # without the time, nothing is stalled
    assert door.admit("c", now=100.0).shed is older
    door.remove(older)
    door.remove(stalled)
    door.add(Conn("c", None))
    assert door.admit("d", now=100.0).verdict is Verdict.REFUSE  # 0.5 s: still arriving
    assert door.admit("d", now=100.0 + STALL_S).shed is fresh
