"""Guarded connections: a trickled head or body is cut off, a connection over the cap refused."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from proxy.config import Settings
from proxy.web.bodies import read_body
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


@pytest.fixture
async def site() -> AsyncIterator[tuple[int, Settings]]:
    settings = Settings(port=0, header_timeout_s=0.5, max_connections=4, keepalive_s=30,
                        body_timeout_s=0.5)
    app = web.Application()
    app[SETTINGS] = settings
    app.router.add_get("/", _hello)
    app.router.add_post("/echo", _echo)
    runner = make_runner(app, settings)
    await runner.setup()
    guarded = GuardedSite(runner, settings)
    await guarded.start()
    yield guarded.port, settings
    await runner.cleanup()


async def _get(port: int) -> tuple[int, bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    answer = await reader.read()
    writer.close()
    return int(answer.split()[1]), answer.partition(b"\r\n\r\n")[2]


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


async def test_a_connection_over_the_cap_is_refused_with_json(
        site: tuple[int, Settings]) -> None:
    port, settings = site
    idle = [await asyncio.open_connection("127.0.0.1", port)
            for _ in range(settings.max_connections)]
    await asyncio.sleep(0.05)
    status, body = await _get(port)
    assert status == 503 and "too many open connections" in json.loads(body)["error"]["message"]
    for _, writer in idle:
        writer.close()
    await asyncio.sleep(0.05)
    assert (await _get(port))[0] == 200  # room again once they go


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
