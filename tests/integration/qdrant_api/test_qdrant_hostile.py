"""Client mistakes on the Qdrant port get Qdrant's 4xx, never a 5xx, the engine's words or a log.

Bodies are read as the native port reads them (timeout, encoding, size, depth)."""

from __future__ import annotations

import asyncio
import gc
import json
import socket
from collections.abc import AsyncIterator
from functools import partial
from pathlib import Path
from typing import NamedTuple

import pytest
import structlog

from proxy.vectors.base import MAX_FILTER_CONDITIONS
from proxy.web.server import settle_heap
from tests.integration.conftest import Proxy, ProxyFactory
from tests.integration.qdrant_api.clients import notes_proxy, qdrant_served
from tests.integration.web.rawhttp import Answer, request

pytestmark = pytest.mark.integration
WRITE_KEY = "qdrant-write-key-for-hostile-tests"
JSON = {"Content-Type": b"application/json"}
WRITE = {**JSON, "api-key": WRITE_KEY.encode()}


class Served(NamedTuple):
    proxy: Proxy
    port: int


@pytest.fixture
async def served(proxies: ProxyFactory, tmp_path: Path) -> AsyncIterator[Served]:
    proxy = await notes_proxy(proxies, tmp_path, qdrant_write_key=WRITE_KEY, body_timeout_s=1.0)
    runner, port = await qdrant_served(proxy)
    answer = await _send(port, "PUT", "/collections/notes/points",
                         json.dumps({"points": [{"id": 1, "vector": {
                             "text": "a glacier lake frozen in winter", "model": "any"}}]}
                                    ).encode(), WRITE)
    assert answer.status == 200, answer.body
    yield Served(proxy, port)
    await runner.cleanup()


async def _send(port: int, method: str, path: str, body: bytes = b"",
                headers: dict[str, bytes] | None = None) -> Answer:
    return await asyncio.to_thread(partial(request, port, method, path, body, headers=headers))


class Case(NamedTuple):
    name: str
    method: str
    path: str
    body: bytes
    headers: dict[str, bytes]
    status: int
    says: str


LONG = "a" * 300
CASES = [Case(*case) for case in [
    ("scroll from an empty offset", "POST", "/collections/notes/points/scroll",
     b'{"offset": ""}', JSON, 400, "offset"),
    ("recommend no points", "POST", "/collections/notes/points/recommend",
     b'{"positive": [1], "limit": 0}', JSON, 400, "limit"),
    ("retrieve a negative id", "POST", "/collections/notes/points", b'{"ids": [-1]}', JSON,
     400, "ids"),
    ("a 300-character collection name", "POST", f"/collections/{LONG}/points/query",
     b'{"query": [0.1]}', JSON, 400, "255"),
    ("a NUL byte in a collection name", "POST", "/collections/no%00tes/points/query",
     b'{"query": [0.1]}', JSON, 400, "name"),
    ("a control character in a collection name", "GET", "/collections/no%1Btes", b"", JSON,
     400, "name"),
    ("set payload on a missing point", "POST", "/collections/notes/points/payload",
     b'{"payload": {"a": 1}, "points": [999]}', WRITE, 404, "999"),
    ("gzip that is not", "POST", "/collections/notes/points/query", b'{"query": [0.1]}',
     {**JSON, "Content-Encoding": b"gzip"}, 400, "gzip"),
    ("an encoding nobody decodes", "POST", "/collections/notes/points/query",
     b'{"query": [0.1]}', {**JSON, "Content-Encoding": b"x-lzma"}, 415, "not supported"),
    ("invalid UTF-8", "POST", "/collections/notes/points/query", b'{"query": "caf\xc3\x28"}',
     JSON, 400, "UTF-8"),
    ("JSON nested 1000 deep", "POST", "/collections/notes/points/count",
     b'{"filter": ' + b"[" * 1000 + b"]" * 1000 + b"}", JSON, 400, "deeper"),
    ("a route this API does not serve", "PATCH", "/collections/notes", b"{}", JSON, 404,
     "not served"),
    ("a count filter of 20,000 conditions", "POST", "/collections/notes/points/count",
     json.dumps({"filter": {"should": [{"key": "k", "match": {"value": n}}
                                       for n in range(20_000)]}}).encode(), JSON, 400,
     "more than 64 conditions"),
    ("a batch of 5,000 searches", "POST", "/collections/notes/points/search/batch",
     json.dumps({"searches": [{"vector": [0.1] * 384, "limit": 100}] * 5000}).encode(), JSON,
     400, "at most 100"),
]]


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
async def test_each_client_mistake_gets_its_4xx_in_qdrants_shape(served: Served, case: Case
                                                                 ) -> None:
    with structlog.testing.capture_logs() as logs:
        answer = await _send(served.port, case.method, case.path, case.body, case.headers)
    assert answer.status == case.status, (answer.status, answer.body[:300])
    said = answer.json()
    assert set(said) == {"status", "time"} and case.says in said["status"]["error"], said
    assert "no rollout declared" not in said["status"]["error"]
    assert "extract" not in said["status"]["error"]  # the engine's own words stay inside
    assert [line for line in logs if line["log_level"] in ("error", "critical")] == []


async def test_a_body_that_never_finishes_is_a_408(served: Served) -> None:
    with socket.create_connection(("127.0.0.1", served.port), timeout=10) as sock:
        sock.sendall(b"POST /collections/notes/points/query HTTP/1.1\r\nHost: x\r\n"
                     b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"q")
        received = await asyncio.to_thread(sock.recv, 65536)
    assert received.startswith(b"HTTP/1.1 408"), received[:200]
    assert b"did not arrive within 1s" in received


async def test_a_client_that_drops_mid_body_is_an_info_line(served: Served) -> None:
    with structlog.testing.capture_logs() as logs:
        with socket.create_connection(("127.0.0.1", served.port), timeout=10) as sock:
            sock.sendall(b"POST /collections/notes/points/query HTTP/1.1\r\nHost: x\r\n"
                         b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{")
            await asyncio.sleep(0.2)
        await asyncio.sleep(0.5)
    assert [line for line in logs if line["log_level"] in ("error", "critical")] == []
    assert [line["event"] for line in logs if line["log_level"] == "info"] == ["client_dropped"]


async def test_an_answer_past_its_bound_is_a_400_naming_it(proxies: ProxyFactory,
                                                          tmp_path: Path) -> None:
    proxy = await notes_proxy(proxies, tmp_path, qdrant_write_key=WRITE_KEY,
                              max_answer_bytes=2048)
    runner, port = await qdrant_served(proxy)
    points = [{"id": n, "vector": {"text": f"note {n} on winter lakes", "model": "any"},
               "payload": {"body": "x" * 200}} for n in range(20)]
    written = await _send(port, "PUT", "/collections/notes/points",
                          json.dumps({"points": points}).encode(), WRITE)
    assert written.status == 200, written.body
    ask = {"query": {"text": "winter lake", "model": "any"}, "with_payload": True}
    small = await _send(port, "POST", "/collections/notes/points/query",
                        json.dumps({**ask, "limit": 2}).encode(), JSON)
    assert small.status == 200 and len(small.json()["result"]["points"]) == 2
    large = await _send(port, "POST", "/collections/notes/points/query",
                        json.dumps({**ask, "limit": 20}).encode(), JSON)
    assert large.status == 400 and "max_answer_bytes (2048)" in \
        large.json()["status"]["error"], large.body[:300]
    await runner.cleanup()


async def test_the_event_loop_answers_while_the_largest_allowed_work_runs(
        proxies: ProxyFactory) -> None:
    """A count with the most conditions allowed and a batch of the most searches allowed, on
    the demo catalogue (300 points, no payload index), one of each in flight at once: the
    native port's /healthz answers all along (a 20,000-condition count once held it 10 s)."""
    await proxies.declare(percent=50)
    proxy = await proxies.start()
    settle_heap()  # as `serve` does once started
    native = proxy.client
    count = json.dumps({"filter": {"should": [{"key": "category", "match": {"value": f"c{n}"}}
                                              for n in range(MAX_FILTER_CONDITIONS)]}}).encode()
    batch = json.dumps({"searches": [{"query": {"text": f"winter {n}", "model": "any"},
                                      "limit": 100} for n in range(100)]}).encode()
    demo = await qdrant_served(proxy)  # the Qdrant port over the same parts

    async def heavy(path: str, body: bytes) -> None:
        for _ in range(4):
            answer = await _send(demo[1], "POST", f"/collections/products/points/{path}", body,
                                 JSON)
            assert answer.status == 200, answer.body[:300]

    work = [asyncio.create_task(heavy("count", count)),
            asyncio.create_task(heavy("query/batch", batch))]
    slowest = 0.0
    while not all(task.done() for task in work):
        started = asyncio.get_running_loop().time()
        assert (await native.get("/healthz")).status == 200
        slowest = max(slowest, asyncio.get_running_loop().time() - started)
        await asyncio.sleep(0.01)
    await asyncio.gather(*work)
    gc.unfreeze()  # this test process goes on to other tests
    await demo[0].cleanup()
    print(f"/healthz slowest {1000 * slowest:.1f} ms")
    # 50-75 ms on a 2-core machine (the note states runs); the bound fails on what this
    # guards against, a request holding the loop for seconds, not on a slower machine
    assert slowest < 1.0
