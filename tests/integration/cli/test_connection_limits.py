"""Under `ulimit -n 256` a new client is served or gets a JSON 503, never a reset.

`embedshift serve` sizes its connection cap to the limit and logs it, whoever holds the other
connections: idle ones are shed for it, busy ones make it a refusal it can read."""

from __future__ import annotations

import asyncio
import json
import resource
import socket
from pathlib import Path

import pytest

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
