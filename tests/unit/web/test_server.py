"""Guarded connections: a trickled head or body is cut off, a new one is let in or refused in JSON.

Past the cap or a client's share an idle connection is shed for a new one; only when all are busy
is the new one refused, with a JSON 503 it can read."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import pytest
from aiohttp import web
from msgspec.structs import replace

from proxy.config import Settings
from proxy.web.bodies import read_body
from proxy.web.connections import STALL_S
from proxy.web.keys import SETTINGS
from proxy.web.server import GuardedSite, make_runner


async def _hello(request: web.Request) -> web.Response:
    return web.json_response({"hello": "world"})


async def _echo(request: web.Request) -> web.Response:
    try:
        return web.json_response({"bytes": len(await read_body(request))})
    except web.HTTPException as exc:
        return web.json_response({"error": {"status": exc.status, "message": exc.text}},
                                 status=exc.status)


async def _start(**overrides: float) -> tuple[web.AppRunner, int, Settings]:
    settings = replace(Settings(port=0, header_timeout_s=0.5, max_connections=4, keepalive_s=30,
                                body_timeout_s=0.5), **overrides)
    runner = make_runner(_app(settings), settings)
    await runner.setup()
    guarded = GuardedSite(runner, settings)
    await guarded.start()
    return runner, guarded.port, settings


def _app(settings: Settings) -> web.Application:
    app = web.Application()
    app[SETTINGS] = settings
    app.router.add_get("/", _hello)
    app.router.add_post("/echo", _echo)
    app.router.add_post("/early", _early)
    app.router.add_get("/busy", _busy)
    app[RELEASE] = asyncio.Event()
    app.on_shutdown.append(_release)
    return app


@pytest.fixture
async def site() -> AsyncIterator[tuple[int, Settings]]:
    runner, port, settings = await _start()
    yield port, settings
    await runner.cleanup()


@pytest.fixture
async def patient_site() -> AsyncIterator[tuple[int, Settings]]:
    """Heads may take 30 s: a connection that began one stays busy through the test."""
    runner, port, settings = await _start(header_timeout_s=30, max_connections=6)
    yield port, settings
    await runner.cleanup()


RELEASE = web.AppKey("release", asyncio.Event)


async def _busy(request: web.Request) -> web.Response:
    """A request being answered: its connection is busy until the app stops."""
    await request.app[RELEASE].wait()
    return web.json_response({})


async def _release(app: web.Application) -> None:
    app[RELEASE].set()


async def _early(request: web.Request) -> web.Response:
    return web.json_response({"error": {"status": 401, "message": "no"}}, status=401)


async def _get(port: int, client: str = "127.0.0.1") -> tuple[int, bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(client, 0))
    writer.write(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    answer = await asyncio.wait_for(reader.read(), timeout=5)
    writer.close()
    return int(answer.split()[1]), answer.partition(b"\r\n\r\n")[2]


Connection = tuple[asyncio.StreamReader, asyncio.StreamWriter]


async def _open(port: int, count: int, client: str = "127.0.0.1",
                send: bytes = b"") -> list[Connection]:
    """``count`` connections from ``client``, each having sent ``send`` (a head begun: busy)."""
    opened = []
    for _ in range(count):
        reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(client, 0))
        writer.write(send)
        opened.append((reader, writer))
        await asyncio.sleep(0.01)  # one by one, so the oldest is known
    return opened


async def _closed(connection: Connection) -> bool:
    try:
        return await asyncio.wait_for(connection[0].read(), timeout=2) == b""
    except TimeoutError:
        return False


async def test_a_slow_head_is_cut_off_while_others_are_served(
        site: tuple[int, Settings]) -> None:
    port, _ = site
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    started = asyncio.get_running_loop().time()
    writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n")  # and then, one header now and then
    for _ in range(3):
        assert (await _get(port))[0] == 200  # everyone else is served meanwhile
        await asyncio.sleep(0.1)
        writer.write(b"X-Slow: 1\r\n")
    answer = await asyncio.wait_for(reader.read(), timeout=5)
    waited = asyncio.get_running_loop().time() - started
    assert answer.startswith(b"HTTP/1.1 408"), answer[:80]
    assert json.loads(answer.partition(b"\r\n\r\n")[2])["error"]["status"] == 408
    assert 0.4 < waited < 3, waited
    writer.close()


async def test_past_the_cap_the_longest_idle_connection_makes_room(
        site: tuple[int, Settings], capsys: pytest.CaptureFixture[str]) -> None:
    port, _ = site
    idle = [*await _open(port, 2, "127.0.0.2"), *await _open(port, 2, "127.0.0.3")]
    assert (await _get(port, "127.0.0.4"))[0] == 200  # served, not refused
    assert await _closed(idle[0])  # the one idle longest went
    assert not any(writer.is_closing() for _, writer in idle[1:])
    assert "connection_shed" in capsys.readouterr().out
    for _, writer in idle:
        writer.close()


async def test_a_client_past_its_share_gives_up_its_own_idle_connection(
        site: tuple[int, Settings]) -> None:
    port, _ = site  # a share is half the cap: 2
    others = await _open(port, 1, "127.0.0.3")
    mine = await _open(port, 2, "127.0.0.2")
    assert (await _get(port, "127.0.0.2"))[0] == 200
    assert await _closed(mine[0])
    assert not await _closed(others[0])  # another client's idle connection is not touched
    for _, writer in others + mine:
        writer.close()


BUSY = b"GET /busy HTTP/1.1\r\nHost: x\r\n\r\n"  # a whole request, being answered: busy
BEGUN = b"GET / HTTP/1.1\r\nHost: x\r\n"  # a head begun and not finished: stalled, in time


async def test_when_all_are_busy_a_new_connection_reads_a_json_503_never_a_reset(
        patient_site: tuple[int, Settings], capsys: pytest.CaptureFixture[str]) -> None:
    port, _ = patient_site
    busy = await _open(port, 3, "127.0.0.2", send=BUSY)  # its whole share
    reader, writer = await asyncio.open_connection("127.0.0.1", port,
                                                   local_addr=("127.0.0.2", 0))
    writer.write(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 40000\r\n\r\n")
    writer.write(b"x" * 40000)  # a body that is not read: the answer must still arrive whole
    answer = await asyncio.wait_for(reader.read(), timeout=5)  # a reset would raise here
    assert answer.startswith(b"HTTP/1.1 503"), answer[:80]
    message = json.loads(answer.partition(b"\r\n\r\n")[2])["error"]["message"]
    assert message == ("too many connections from your address: the limit is 3 and all are "
                       "busy; retry shortly")
    writer.close()
    assert (await _get(port, "127.0.0.3"))[0] == 200  # another client still gets in
    more = await _open(port, 3, "127.0.0.3", send=BUSY)  # the cap (6) is full of busy ones
    status, body = await _get(port, "127.0.0.4")
    assert status == 503 and "too many open connections: the limit is 6" in body.decode()
    logged = capsys.readouterr().out
    assert "connection_refused" in logged and "reason=max_connections_per_client" in logged
    for _, writer in busy + more:
        writer.close()


async def test_an_early_answer_is_the_only_answer_on_its_connection(
        site: tuple[int, Settings]) -> None:
    port, _ = site
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"POST /early HTTP/1.1\r\nHost: x\r\nContent-Length: 20\r\n\r\nxxxxx")
    answer = await asyncio.wait_for(reader.readuntil(b"}}"), timeout=5)
    assert answer.startswith(b"HTTP/1.1 401")
    await asyncio.sleep(1.5)  # past the head timeout (0.5 s): the body's rest is not a head
    writer.write(b"x" * 15)  # the body's rest, late
    with pytest.raises(TimeoutError):  # no second, unsolicited answer
        await asyncio.wait_for(reader.read(1), timeout=0.5)
    writer.close()


async def test_a_body_that_arrives_whole_is_read_and_a_trickled_one_cut_off(
        site: tuple[int, Settings]) -> None:
    port, _ = site
    head = (b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 20\r\n"
            b"Connection: close\r\n\r\n")
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(head + b"x" * 20)  # with its head, in one packet
    answer = await asyncio.wait_for(reader.read(), timeout=5)
    assert json.loads(answer.partition(b"\r\n\r\n")[2]) == {"bytes": 20}
    writer.close()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(head + b"x" * 5)  # and the rest never
    started = asyncio.get_running_loop().time()
    # the answer, not the close: aiohttp lingers to drain what the request still owes
    answer = await asyncio.wait_for(reader.readuntil(b"}}"), timeout=5)
    waited = asyncio.get_running_loop().time() - started
    assert answer.startswith(b"HTTP/1.1 408"), answer[:80]
    assert "did not arrive within 0.5s" in answer.decode()
    assert 0.4 < waited < 3, waited
    writer.close()


async def test_two_sites_of_one_process_share_one_cap() -> None:
    """The Qdrant API's site beside the native one: one descriptor budget, not two."""
    runner, _, settings = await _start(header_timeout_s=30, max_connections=6)
    first = next(site for site in runner.sites if isinstance(site, GuardedSite))
    other_runner = make_runner(_app(settings), settings)
    await other_runner.setup()
    second = GuardedSite(other_runner, settings, shared_with=first)
    await second.start()
    assert second.connections is first.connections
    busy = [*await _open(first.port, 3, "127.0.0.2", send=BUSY),
            *await _open(second.port, 3, "127.0.0.3", send=BUSY)]
    status, body = await _get(first.port, "127.0.0.4")
    assert status == 503 and "too many open connections: the limit is 6" in body.decode()
    for _, writer in busy:
        writer.close()
    await other_runner.cleanup()
    await runner.cleanup()


async def test_a_stalled_request_makes_room_for_a_new_client_a_busy_one_never(
        patient_site: tuple[int, Settings]) -> None:
    """A cap full of unfinished requests: the longest-stalled is told 408 and closed for a new
    client, where a cap full of requests being answered refuses it."""
    port, _ = patient_site
    stalled = await _open(port, 3, "127.0.0.2", send=BEGUN)
    busy = await _open(port, 3, "127.0.0.3", send=BUSY)
    assert (await _get(port, "127.0.0.4"))[0] == 503  # none stalled for a second yet
    await asyncio.sleep(STALL_S)
    assert (await _get(port, "127.0.0.4"))[0] == 200
    answer = await asyncio.wait_for(stalled[0][0].read(), timeout=5)
    assert answer.startswith(b"HTTP/1.1 408") and b"stalled" in answer, answer[:120]
    assert not any(writer.is_closing() for _, writer in busy)
    for _, writer in stalled + busy:
        writer.close()
