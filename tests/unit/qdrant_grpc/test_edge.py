"""The gRPC edge's refusals read as Qdrant's, and its connections share the REST edges' budget."""

from __future__ import annotations

from dataclasses import dataclass

import grpc
import pytest

from proxy.qdrant_grpc.server import Door, Refused, refusal
from proxy.web.connections import Connections
from rollout_rules.errors import (
    AccessError,
    BackendError,
    FeatureOff,
    NotFoundError,
    RateLimited,
    RuleError,
)


@pytest.mark.parametrize(("error", "code", "message"), [
    (RuleError("limit", "must be at most 1000"), grpc.StatusCode.INVALID_ARGUMENT,
     "limit: must be at most 1000"),
    (AccessError("a valid api-key is required"), grpc.StatusCode.UNAUTHENTICATED,
     "a valid api-key is required"),
    (FeatureOff("writes are off"), grpc.StatusCode.PERMISSION_DENIED, "writes are off"),
    (NotFoundError("x"), grpc.StatusCode.NOT_FOUND,
     "no rollout declared for alias 'x' (declare it with 'init')"),
    (BackendError("engine said /var/lib/secret", public="the store failed"),
     grpc.StatusCode.UNAVAILABLE, "the store failed"),
])
def test_each_refusal_has_the_code_qdrant_uses_and_the_public_message(
        error: Exception, code: grpc.StatusCode, message: str) -> None:
    refused = refusal(error)
    assert (refused.code, refused.message, refused.trailing) == (code, message, ())


def test_a_rate_limit_says_when_to_come_back_and_a_bug_says_nothing() -> None:
    limited = refusal(RateLimited("too many", retry_after_s=2.2))
    assert limited.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert limited.trailing == (("retry-after", "3"),)
    bug = refusal(RuntimeError("Traceback ... password=hunter2"))
    assert (bug.code, bug.message) == (grpc.StatusCode.INTERNAL, "internal error")


def test_connections_over_the_cap_shed_an_idle_one_else_are_refused() -> None:
    connections = Connections(cap=2, per_client=2)
    door = Door(connections, idle_s=3600)
    first = door.enter("ipv4:127.0.0.1:4001")
    door.enter("ipv4:127.0.0.1:4002")
    assert door.enter("ipv4:127.0.0.1:4001") is first  # a second call on one connection
    assert len(connections) == 2
    with pytest.raises(Refused) as refused:  # both busy: nothing to shed
        door.enter("ipv4:127.0.0.1:4003")
    assert refused.value.code == grpc.StatusCode.UNAVAILABLE
    assert "max_connections" in refused.value.message
    door.leave(first)
    assert len(connections) == 2  # one call still in flight on it
    door.leave(first)
    door.enter("ipv4:127.0.0.1:4003")  # the idle one gives way
    assert set(door.peers) == {"ipv4:127.0.0.1:4002", "ipv4:127.0.0.1:4003"}
    assert len(connections) == 2


def test_a_connection_idle_past_the_servers_idle_close_is_forgotten() -> None:
    connections = Connections(cap=10, per_client=10)
    door = Door(connections, idle_s=0.0)  # closed by the server as soon as it is idle
    door.leave(door.enter("ipv6:[::1]:4001"))
    door.enter("ipv6:[::1]:4002")
    assert set(door.peers) == {"ipv6:[::1]:4002"} and len(connections) == 1
    assert connections.count("ipv6:[::1]") == 1  # a client is its address, not its port


@dataclass(eq=False)
class HttpConnection:
    """An HTTP site's connection in the shared budget: shed, it leaves and closes itself."""

    connections: Connections
    client: str = "127.0.0.9"
    idle_since: float | None = 1.0
    waiting_since: float | None = None
    closed: bool = False

    def shed(self) -> None:
        self.connections.remove(self)
        self.closed = True


def test_either_wire_sheds_the_others_idle_connection_through_its_own_shed() -> None:
    connections = Connections(cap=1, per_client=1)
    door = Door(connections, idle_s=3600, clock=lambda: 5.0)
    http = HttpConnection(connections)
    connections.add(http)
    held = door.enter("ipv4:127.0.0.1:4001")  # over the cap: the idle HTTP one gives way
    assert http.closed and list(door.peers) == ["ipv4:127.0.0.1:4001"] and len(connections) == 1
    door.leave(held)
    admission = connections.admit("127.0.0.9")  # an HTTP site's newcomer, as GuardedSite asks
    assert admission.shed is held and held is not None
    held.shed()  # what GuardedSite does with whichever connection it is given
    assert door.peers == {} and len(connections) == 0
