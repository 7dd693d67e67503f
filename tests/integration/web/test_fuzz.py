"""No body, header or path a fuzzer sends to a running proxy gets a 5xx or a non-JSON answer."""

from __future__ import annotations

import asyncio
import http.client
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from proxy.state.redis_server import EmbeddedRedis
from tests.integration.conftest import ADMIN_TOKEN, Engine, ProxyFactory

pytestmark = pytest.mark.integration

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12)
search_bodies = st.fixed_dictionaries(
    {"query": st.one_of(st.text(), json_values)},
    optional={key: json_values for key in ("user_id", "session_id", "tenant", "limit", "filter",
                                            "version", "with_payload", "properties")})
conditions = st.fixed_dictionaries({"key": st.text(max_size=10)}, optional={
    "match": st.dictionaries(st.sampled_from(["value", "any", "except", "text"]), json_values,
                             max_size=2),
    "range": st.dictionaries(st.sampled_from(["gt", "gte", "lt", "lte"]), json_values,
                             max_size=2)})
filters = st.fixed_dictionaries({"query": st.just("tent"), "filter": st.fixed_dictionaries(
    {}, optional={kind: st.lists(conditions, max_size=3) for kind in ("must", "should",
                                                                      "must_not")})})
header_text = st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=40)
paths = st.one_of(
    st.sampled_from(["/v1/aliases/products/search", "/admin/aliases",
                     "/admin/aliases/products/percent", "/admin/aliases/products/rollback",
                     "/admin/aliases/products/history?limit=x", "/readyz", "/openapi.json"]),
    st.text(max_size=20).map(lambda alias: f"/v1/aliases/{quote(alias, safe='')}/search"))


@pytest.fixture
def running_proxy(redis_server: EmbeddedRedis, prefix: str, demo_engine: Engine,
                  models_dir: Path) -> Iterator[int]:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()

    def run(coroutine: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, loop).result(timeout=60)

    factory = ProxyFactory(redis_server.url, prefix, demo_engine, models_dir)
    run(factory.declare(percent=50))
    proxy = run(factory.start())
    yield int(proxy.client.port or 0)
    run(factory.close())
    loop.call_soon_threadsafe(loop.stop)
    thread.join(timeout=10)


def _request(port: int, method: str, path: str, body: bytes, headers: dict[str, str]) -> None:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.request(method, path, body=body, headers=headers)
        response = connection.getresponse()
        payload = response.read()
    finally:
        connection.close()
    assert response.status < 500, (method, path, body[:200], payload[:300])
    answer = json.loads(payload)  # every answer is JSON, success or not
    if response.status >= 400:
        assert set(answer) == {"error"} and answer["error"]["status"] == response.status
    elif path.endswith("/search"):
        assert answer["model_version"] in ("v1", "v2"), answer
        assert answer["collection"] == f"products_{answer['model_version']}"
        assert isinstance(answer["hits"], list) and len(answer["hits"]) <= 100


def test_no_input_produces_a_server_error(running_proxy: int) -> None:
    @settings(max_examples=250, deadline=None, suppress_health_check=list(HealthCheck))
    @given(body=st.one_of(search_bodies, filters, json_values, st.binary(max_size=200)),
           path=paths, method=st.sampled_from(["POST", "GET", "PUT"]),
           version=st.one_of(st.none(), header_text), traceparent=st.one_of(st.none(),
                                                                           header_text),
           authorised=st.booleans())
    def check(body: Any, path: str, method: str, *, version: str | None,
              traceparent: str | None, authorised: bool) -> None:
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        headers = {"Content-Type": "application/json"}
        if version is not None:
            headers["X-Embedshift-Version"] = version
        if traceparent is not None:
            headers["traceparent"] = traceparent
        if authorised:
            headers["Authorization"] = f"Bearer {ADMIN_TOKEN}"
        _request(running_proxy, method, path, raw, headers)

    check()
