"""Inputs that once gave a 500 get their 4xx as JSON; a real 500 is traced, logged and counted."""

from __future__ import annotations

import asyncio
import gzip
import json
from functools import partial
from typing import Any, NamedTuple

import pytest
import structlog

from proxy.cli.main import main
from tests.integration.conftest import ADMIN_TOKEN, ProxyFactory
from tests.integration.web.rawhttp import Answer, request

pytestmark = pytest.mark.integration

SEARCH = "/v1/aliases/products/search"
DOCUMENTS = "/v1/aliases/products/documents"
JSON = {"Content-Type": b"application/json"}
ADMIN = {**JSON, "Authorization": f"Bearer {ADMIN_TOKEN}".encode()}


async def _send(port: int, method: str, path: str, body: bytes = b"",
                headers: dict[str, bytes] | None = None) -> Answer:
    return await asyncio.to_thread(partial(request, port, method, path, body, headers=headers))


class _Number(str):
    """A JSON number kept as the text it was written as."""


def _error(answer: Answer, status: int) -> dict[str, Any]:
    assert answer.status == status, (answer.status, answer.body[:300])
    error: dict[str, Any] = answer.json()["error"]
    assert error["status"] == status
    return error


class Case(NamedTuple):
    name: str
    path: str
    body: bytes
    headers: dict[str, bytes]
    status: int
    says: str


CASES = [Case(*case) for case in [
    ("invalid UTF-8 in a JSON string", SEARCH, b'{"query": "caf\xc3\x28 jacket"}', JSON, 400,
     "UTF-8"),
    ("invalid UTF-8 in an admin reason", "/admin/aliases/products/pause",
     b'{"reason": "\xff\xfe"}', ADMIN, 400, "UTF-8"),
    ("JSON nested 1000 deep in 2 KB", SEARCH,
     b'{"query": "x", "filter": ' + b"[" * 1000 + b"]" * 1000 + b"}", JSON, 400, "deeper"),
    ("gzip that is not", SEARCH, b'{"query": "x"}', {**JSON, "Content-Encoding": b"gzip"}, 400,
     "gzip"),
    ("deflate that is not", SEARCH, b'{"query": "x"}', {**JSON, "Content-Encoding": b"deflate"},
     400, "deflate"),
    ("an encoding nobody decodes", SEARCH, b'{"query": "x"}',
     {**JSON, "Content-Encoding": b"x-lzma"}, 415, "not supported"),
    ("Bearer with a non-UTF-8 byte", "/admin/aliases", b"",
     {"Authorization": b"Bearer \xff"}, 401, "Bearer"),
    ("a token without Bearer", "/admin/aliases", b"",
     {"Authorization": ADMIN_TOKEN.encode()}, 401, "Bearer"),
    ("a values_count condition", SEARCH,
     b'{"query": "x", "filter": {"must": [{"key": "price", "values_count": {"gt": 1}}]}}',
     JSON, 400, "values_count"),
    ("a geo_radius condition", SEARCH, json.dumps({"query": "x", "filter": {"must": [
        {"key": "at", "geo_radius": {"center": {"lon": 1, "lat": 2}, "radius": 5}}]}}).encode(),
     JSON, 400, "geo_radius"),
    ("a key with no condition", SEARCH,
     b'{"query": "x", "filter": {"must": [{"key": "category"}]}}', JSON, 400, "nothing"),
    ("documents without the token", DOCUMENTS, b'{"documents": []}', JSON, 401, "Bearer"),
    ("no documents", DOCUMENTS, b'{"documents": []}', ADMIN, 400, "documents"),
    ("a document without text", DOCUMENTS, b'{"documents": [{"id": 1}]}', ADMIN, 400, "text"),
    ("a document with blank text", DOCUMENTS, b'{"documents": [{"id": 1, "text": " "}]}', ADMIN,
     400, "documents[0].text"),
    ("a negative document id", DOCUMENTS, b'{"documents": [{"id": -4, "text": "a"}]}', ADMIN,
     400, "documents[0].id"),
    ("the same id twice", DOCUMENTS,
     b'{"documents": [{"id": 1, "text": "a"}, {"id": 1, "text": "b"}]}', ADMIN, 400,
     "documents[1].id"),
    ("embedshift's own payload key", DOCUMENTS,
     b'{"documents": [{"id": 1, "text": "a", "payload": {"_embedshift": 1}}]}', ADMIN, 400,
     "reserved"),
    ("documents past 8 MiB", DOCUMENTS, b'{"documents": [' + b" " * (9 << 20) + b"]}", ADMIN,
     413, ""),
    ("a backfill with no workers", "/admin/aliases/products/backfill", b'{"workers": 0}',
     ADMIN, 400, "workers"),
    ("a verify sample too large", "/admin/aliases/products/verify", b'{"sample": 99999}', ADMIN,
     400, "sample"),
]]


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
async def test_each_input_that_gave_a_500_gets_its_4xx(proxies: ProxyFactory, case: Case) -> None:
    await proxies.declare()
    proxy = await proxies.start()
    method = "GET" if case.path == "/admin/aliases" else "POST"
    answer = await _send(proxy.client.port or 0, method, case.path, case.body, case.headers)
    error = _error(answer, case.status)
    assert case.says in error["message"], (case.name, error)
    assert ADMIN_TOKEN not in json.dumps(error)


async def test_real_gzip_is_decoded_and_hostile_trace_headers_are_ignored(
        proxies: ProxyFactory) -> None:
    await proxies.declare()
    proxy = await proxies.start()
    port = proxy.client.port or 0
    packed = gzip.compress(b'{"query": "warm jacket", "user_id": "u"}')
    answer = await _send(port, "POST", SEARCH, packed, {**JSON, "Content-Encoding": b"gzip"})
    assert answer.status == 200 and answer.json()["hits"]
    for header in ({"baggage": b"k=\xff\xfe"}, {"traceparent": b"00-\xff-zz-01"},
                   {"baggage": b"=" * 5000}):
        answer = await _send(port, "POST", SEARCH, b'{"query": "tent"}', {**JSON, **header})
        assert answer.status == 200, (header, answer.body[:200])


async def test_expect_continue_with_an_empty_body_gets_its_json_answer(
        proxies: ProxyFactory) -> None:
    """The fuzzer once drew this and read the interim 100 as the answer: the answer after it
    is the one that counts, a JSON 400 naming the empty body."""
    await proxies.declare()
    proxy = await proxies.start()
    answer = await _send(proxy.client.port or 0, "POST", SEARCH, b"",
                         {**JSON, "Expect": b"100-continue"})
    assert _error(answer, 400)["message"]


async def test_negative_zero_percent_is_recorded_as_zero(proxies: ProxyFactory) -> None:
    await proxies.declare(percent=5)
    proxy = await proxies.start()
    answer = await _send(proxy.client.port or 0, "POST", "/admin/aliases/products/percent",
                         b'{"percent": -0.0, "reason": "off"}', ADMIN)
    assert answer.status == 200
    # every number as written, so a negative zero shows as "-0.0" (the body also holds dates
    # and ids, which may contain "-0" as text: only numbers are looked at)
    numbers = _numbers(json.loads(answer.body, parse_float=_Number, parse_int=_Number))
    assert answer.json()["after"]["percent"] == 0.0
    assert numbers and not [n for n in numbers if n.startswith("-") and float(n) == 0], numbers


def _numbers(value: Any) -> list[str]:
    """Every number in a JSON value parsed with numbers kept as their text."""
    if isinstance(value, dict):
        return [n for item in value.values() for n in _numbers(item)]
    if isinstance(value, list):
        return [n for item in value for n in _numbers(item)]
    return [value] if isinstance(value, _Number) else []


async def test_a_500_is_traced_logged_with_its_traceback_and_counted(
        proxies: ProxyFactory) -> None:
    await proxies.declare(percent=0)
    proxy = await proxies.start()
    proxy.store.exploding.add("products_v1")
    with structlog.testing.capture_logs() as logs:
        response = await proxy.client.post(SEARCH, json={"query": "a bug", "user_id": "u"})
    error = (await response.json())["error"]
    assert response.status == 500 and error["type"] == "InternalError"
    trace_id = error["message"].removeprefix("internal error (trace ").rstrip(")")
    assert len(trace_id) == 32 and set(trace_id) != {"0"}
    spans = [s for s in proxy.spans.get_finished_spans()
             if format(s.context.trace_id, "032x") == trace_id]
    assert spans, "the trace id names no span"
    logged = [e for e in logs if e["event"] == "unhandled_error"]
    assert len(logged) == 1
    assert logged[0]["error_type"] == "RuntimeError" and "injected bug" in logged[0]["error"]
    assert isinstance(logged[0]["exc_info"], RuntimeError)  # rendered as a traceback
    await proxy.client.get("/no/such/route")
    metrics = await (await proxy.client.get("/metrics")).text()
    assert ('embedshift_http_requests_total{method="POST",route="/v1/aliases/{alias}/search",'
            'status="500"} 1.0') in metrics
    assert ('embedshift_http_requests_total{method="GET",route="unmatched",status="404"} 1.0'
            in metrics)


async def test_unknown_paths_wrong_methods_and_odd_expectations_are_json(
        proxies: ProxyFactory) -> None:
    await proxies.declare()
    proxy = await proxies.start()
    port = proxy.client.port or 0
    _error(await _send(port, "GET", "/no/such/path"), 404)
    wrong = await _send(port, "GET", SEARCH)
    _error(wrong, 405)
    assert wrong.headers["allow"] == "POST"
    for path in ("/no/such/path", SEARCH):
        _error(await _send(port, "POST", path, b'{"query": "x"}', {**JSON, "Expect": b"gzip"}),
               417)
    metrics = await (await proxy.client.get("/metrics")).text()
    assert 'route="unmatched",status="405"' in metrics


async def test_no_request_learns_the_source_text_an_answer_leaves_out(
        proxies: ProxyFactory) -> None:
    """Answers never carry the stored text; a filter on it (any spelling, any clause) would
    tell word by word whether a document holds it, so it is refused, with or without a token,
    and the refusal is the same whether the word is there or not."""
    await proxies.declare()
    proxy = await proxies.start()
    port = proxy.client.port or 0
    answers = set()
    for key in ("_embedshift.text", '"_embedshift".text', "_embedshift.doc_id"):
        for word in ("jacket", "zzzzzz-not-there"):
            match = {"key": key, "match": {"text": word}}
            for shape in ({"must": [match]}, {"should": [{"must_not": [match]}]}):
                body = json.dumps({"query": "warm jacket", "filter": shape}).encode()
                for headers in (JSON, ADMIN):
                    answer = await _send(port, "POST", SEARCH, body, headers)
                    error = _error(answer, 400)
                    assert "cannot be filtered on" in error["message"], error
                    answers.add(error["message"].split(": ", 1)[1])
    assert len(answers) == 3  # one refusal per key spelling: nothing about the word


async def test_callers_text_is_stored_as_given_and_printed_on_one_line(
        proxies: ProxyFactory, capsys: pytest.CaptureFixture[str]) -> None:
    """A reason with a newline and an escape sequence is kept as sent, but `history` prints
    one line per entry; an actor header that is not UTF-8 is a 400 naming it, nothing
    written; a -0 percent leaves no "-0" in the audit reason."""
    await proxies.declare(percent=5)
    proxy = await proxies.start()
    port = proxy.client.port or 0
    forged = "ok\nrev 99   2026-01-01T00:00:00.000Z  root  stable v1 -> v9\x1b[2K"
    answer = await _send(port, "POST", "/admin/aliases/products/pause",
                         json.dumps({"reason": forged}).encode(), ADMIN)
    assert answer.status == 200 and answer.json()["after"]["reason"] == forged
    refused = await _send(port, "POST", "/admin/aliases/products/resume", b"",
                          {**ADMIN, "X-Embedshift-Actor": b"\xff\xfeops"})
    assert "X-Embedshift-Actor" in _error(refused, 400)["message"]
    await _send(port, "POST", "/admin/aliases/products/resume", b"", ADMIN)
    await _send(port, "POST", "/admin/aliases/products/percent", b'{"percent": -0.0}', ADMIN)
    env = {"REDIS_URL": proxies.redis_url, "EMBEDSHIFT_REDIS_PREFIX": proxies.prefix}
    assert await asyncio.to_thread(main, ["history", "products"], env) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("rev ")]
    assert len(lines) == 5 and lines[0].endswith("(ramp to 0%)"), lines
    assert lines[2].endswith("(ok\\nrev 99   2026-01-01T00:00:00.000Z  root  stable v1 -> "
                             "v9\\x1b[2K)"), lines


async def test_a_version_in_a_path_is_a_declared_version_never_a_path_or_a_pattern(
        proxies: ProxyFactory) -> None:
    """Once `versions/..%2Farticles%2Fv1/unarchive` on one alias wrote another alias's archive
    back, and `*` picked any archive: a version named in a path must be the rule's own."""
    await proxies.declare()
    proxy = await proxies.start()
    port = proxy.client.port or 0
    for name in ("..%2Farticles%2Fv1", "*", "v%2A", "..", "v1%00"):
        for action in ("unarchive", "archive"):
            answer = await _send(port, "POST",
                                 f"/admin/aliases/products/versions/{name}/{action}", b"", ADMIN)
            assert answer.status in (400, 404), (name, action, answer.status, answer.body)
            assert answer.json()["error"]["status"] == answer.status
