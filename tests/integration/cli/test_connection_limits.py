"""Under `ulimit -n 256` a new client is served or gets a JSON 503, never a reset.

`embedshift serve` sizes its connection cap to the limit and logs it, whoever holds the other
connections: idle ones are shed for it, busy ones make it a refusal it can read."""

from __future__ import annotations

import asyncio
import json
import resource
import socket
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from loadtest.ports import free_port
from tests.integration.cli.conftest import Serving, StartServing, wait_ready

pytestmark = pytest.mark.integration
FD_LIMIT = 256
BEGUN = b"POST /v1/aliases/products/search HTTP/1.1\r\nHost: x\r\n"  # a head, unfinished


@pytest.fixture(autouse=True)
def room_for_the_clients() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 2048 <= hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (2048, hard))


def _open(port: int, count: int, send: bytes = b"") -> list[socket.socket]:
    opened = []
    for _ in range(count):
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        if send:
            sock.sendall(send)
        opened.append(sock)
    return opened


def _ask(port: int, client: str = "127.0.0.1") -> tuple[int, dict[str, object]]:
    """One search on a new connection; a reset raises ``ConnectionResetError``."""
    body = json.dumps({"query": "warm jacket", "user_id": "new"}).encode()
    with socket.create_connection(("127.0.0.1", port), timeout=10,
                                  source_address=(client, 0)) as sock:
        sock.sendall(b"POST /v1/aliases/products/search HTTP/1.1\r\nHost: x\r\n"
                     b"Content-Type: application/json\r\nConnection: close\r\n"
                     b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
        return _read_answer(sock)


def _read_answer(sock: socket.socket) -> tuple[int, dict[str, object]]:
    answer = b""
    while chunk := sock.recv(65536):
        answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    assert b"application/json" in head, head
    return int(head.split()[1]), json.loads(body)


def _events(log: Path, event: str) -> list[dict[str, object]]:
    lines = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    return [line for line in lines if line.get("event") == event]


def _descriptors(serving: Serving) -> int:
    return len(list(Path(f"/proc/{serving.process.pid}/fd").iterdir()))


async def test_under_ulimit_256_a_new_client_is_served_or_refused_in_json_never_reset(
        start_serving: StartServing) -> None:
    serving = start_serving(fd_limit=FD_LIMIT, EMBEDSHIFT_HEADER_TIMEOUT_S="120",
                            EMBEDSHIFT_KEEPALIVE_S="120")
    await wait_ready(serving, timeout_s=240)
    [cap] = _events(serving.log, "connections")
    assert cap["fd_limit"] == FD_LIMIT and cap["cap"] == 160 and cap["reason"] == "fd_limit"
    assert cap["per_client"] == 80

    # 300 idle connections: each past the client's share makes room by shedding its own
    # longest-idle one, and a new client is served
    idle = await asyncio.to_thread(_open, serving.port, 300)
    await asyncio.sleep(0.5)
    for _ in range(5):
        assert (await asyncio.to_thread(_ask, serving.port))[0] == 200
    assert _descriptors(serving) < FD_LIMIT
    assert _events(serving.log, "connection_shed")

    # 300 begun requests: the client's share fills with busy connections, then its new ones are
    # refused in JSON, read in full; another address is still served
    busy = await asyncio.to_thread(_open, serving.port, 300 - 80, BEGUN)
    status, answer = await asyncio.to_thread(_ask, serving.port)
    assert status == 503, answer
    assert "too many connections from your address: the limit is 80" in str(answer)
    assert (await asyncio.to_thread(_ask, serving.port, "127.0.0.2"))[0] == 200
    refused = [sock for sock in busy[80:]]  # admitted first, shed none (all busy): the rest
    statuses = [(await asyncio.to_thread(_read_answer, sock))[0] for sock in refused[-20:]]
    assert set(statuses) == {503}
    refusals = _events(serving.log, "connection_refused")
    assert refusals and refusals[0]["reason"] == "max_connections_per_client"
    assert _descriptors(serving) < FD_LIMIT
    for sock in idle + busy:
        sock.close()


UNFINISHED = (b"POST /collections/products/points/query HTTP/1.1\r\nHost: x\r\n"
              b"Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"query\":")


def _held(port: int, client: str, count: int) -> list[socket.socket]:
    opened = []
    for _ in range(count):
        sock = socket.create_connection(("127.0.0.1", port), timeout=10,
                                        source_address=(client, 0))
        sock.sendall(UNFINISHED)
        opened.append(sock)
    return opened


def _ask_qdrant(port: int) -> int:
    body = b'{"query": {"text": "warm jacket", "model": "any"}, "limit": 2}'
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"POST /collections/products/points/query HTTP/1.1\r\nHost: x\r\n"
                     b"Content-Type: application/json\r\nConnection: close\r\n"
                     b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
        return _read_answer(sock)[0]


async def _first_served(ask: Callable[[], int], within_s: float) -> float:
    """Seconds until ``ask`` is answered 200 (asking again after each JSON 503)."""
    started = time.monotonic()
    while (status := await asyncio.to_thread(ask)) != 200:
        assert status == 503 and time.monotonic() - started < within_s, status
        await asyncio.sleep(0.05)
    return time.monotonic() - started


async def test_a_thousand_unfinished_bodies_keep_no_new_client_out(
        start_serving: StartServing) -> None:
    """1,000 bodies begun and never finished, from two addresses, on the Qdrant port (the
    whole connection cap): a new client on either port is served within 2 s, the longest-stalled
    making room, where before it waited out the body timeout."""
    qdrant = free_port()
    serving = start_serving(EMBEDSHIFT_QDRANT_PORT=str(qdrant), EMBEDSHIFT_BODY_TIMEOUT_S="60")
    await wait_ready(serving, timeout_s=240)
    held = [*await asyncio.to_thread(_held, qdrant, "127.0.0.2", 500),
            *await asyncio.to_thread(_held, qdrant, "127.0.0.3", 500)]
    native = await _first_served(lambda: _ask(serving.port)[0], within_s=2)
    other = await _first_served(lambda: _ask_qdrant(qdrant), within_s=2)
    print(f"a new client served after {native:.2f} s (native), {other:.2f} s (Qdrant)")
    assert _events(serving.log, "connection_shed")
    for sock in held:
        sock.close()
