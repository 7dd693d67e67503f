"""No body, header, encoding or path a fuzzer sends to a proxy gets a 5xx or a non-JSON answer."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, cast
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from msgspec.structs import replace

from proxy.state.redis_server import EmbeddedRedis
from proxy.web.routes import ROUTES
from proxy.web.server import GuardedSite, make_runner
from tests.integration.conftest import ADMIN_TOKEN, OVERRIDE_TOKEN, Engine, ProxyFactory
from tests.integration.web.rawhttp import request

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


Run = Callable[[Any], Any]


@contextlib.contextmanager
def loop_thread() -> Iterator[Run]:
    """An event loop in a thread of its own (hypothesis's tests are synchronous): ``run``
    awaits a coroutine there."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()

    def run(coroutine: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, loop).result(timeout=60)

    yield run
    loop.call_soon_threadsafe(loop.stop)
    thread.join(timeout=10)
    loop.close()  # its self-pipe closed here, not left for a later test's garbage collection


@pytest.fixture
def loop_run() -> Iterator[Run]:
    with loop_thread() as run:
        yield run


@pytest.fixture
def factory(redis_server: EmbeddedRedis, prefix: str, demo_engine: Engine,
            models_dir: Path) -> ProxyFactory:
    return ProxyFactory(redis_server.url, prefix, demo_engine, models_dir)


@pytest.fixture
def running_proxy(factory: ProxyFactory, loop_run: Run) -> Iterator[int]:
    run = loop_run
    run(factory.declare(percent=50, allow_request=True))
    app, config, rules, _, _ = factory.app()
    runner = make_runner(app, config)

    async def serve() -> int:
        await runner.setup()
        site = GuardedSite(runner, replace(config, port=0))  # as `serve` listens
        await site.start()
        return site.port

    yield run(serve())
    run(runner.cleanup())
    run(rules.aclose())


NOT_JSON = ("/metrics", "/ui", "/ui/ui.js", "/ui/ui.css")


def _request(port: int, method: str, path: str, body: bytes, headers: dict[str, bytes]) -> None:
    response = request(port, method, path, body, headers=headers)
    assert response.status < 500, (method, path, body[:200], response.body[:300])
    if path in NOT_JSON and response.status < 400:  # metrics text, the status page's files
        return
    assert response.headers.get("content-type", "").startswith("application/json"), \
        (path, response.headers)
    answer = response.json()  # every answer is JSON, success or not
    if response.status >= 400:
        assert set(answer) == {"error"} and answer["error"]["status"] == response.status
        assert ADMIN_TOKEN not in json.dumps(answer) and OVERRIDE_TOKEN not in json.dumps(answer)
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
        headers = {"Content-Type": b"application/json"}
        if version is not None:
            headers["X-Embedshift-Version"] = version.encode()
            headers["X-Embedshift-Override-Token"] = OVERRIDE_TOKEN.encode()
        if traceparent is not None:
            headers["traceparent"] = traceparent.encode()
        if authorised:
            headers["Authorization"] = f"Bearer {ADMIN_TOKEN}".encode()
        _request(running_proxy, method, path, raw, headers)

    check()


# Raw bytes where clients send text: any byte but CR and LF in a header value, bodies that are
# not what their encoding says, JSON with invalid UTF-8 or deep nesting, on every route.
header_bytes = st.binary(max_size=60).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b""))
HEADER_NAMES = ["Content-Type", "Content-Encoding", "traceparent", "tracestate", "baggage",
                "Authorization", "X-Embedshift-Version", "X-Embedshift-Override-Token",
                "X-Embedshift-Actor", "Accept", "Transfer-Encoding", "Expect"]
hostile_headers = st.dictionaries(st.sampled_from(HEADER_NAMES), st.one_of(
    header_bytes, st.sampled_from([b"gzip", b"deflate", b"br", b"identity, gzip", b"chunked",
                                   b"Bearer " + ADMIN_TOKEN.encode(), b"Bearer \xff",
                                   OVERRIDE_TOKEN.encode(), b"v2", b"100-continue"])),
    max_size=4)
hostile_bodies = st.one_of(
    st.binary(max_size=300),
    st.builds(lambda s: gzip.compress(s.encode()), st.text(max_size=60)),
    st.builds(lambda text, junk: b'{"query": "' + text.encode() + junk + b'"}',
              st.text(max_size=20), st.binary(max_size=8)),
    st.integers(min_value=1, max_value=3000).map(
        lambda depth: b'{"query": "x", "filter": ' + b"[" * depth + b"]" * depth + b"}"))
every_route = st.sampled_from([(route.method, route.path.replace("{alias}", "products"))
                               for route in ROUTES])


def test_no_raw_bytes_produce_a_server_error(running_proxy: int) -> None:
    @settings(max_examples=250, deadline=None, suppress_health_check=list(HealthCheck))
    @given(route=every_route, headers=hostile_headers, body=hostile_bodies,
           authorised=st.booleans())
    def check(route: tuple[str, str], headers: dict[str, bytes], body: bytes,
              authorised: bool) -> None:
        method, path = route
        if authorised and "Authorization" not in headers:
            headers = {**headers, "Authorization": f"Bearer {ADMIN_TOKEN}".encode()}
        if path.endswith(("/rollback", "/promote", "/pause", "/resume", "/percent", "/restore",
                          "/backfill", "/retire", "/archive", "/unarchive")) or \
                method == "DELETE":
            # keep the alias the search uses intact (a body-less POST starts a backfill)
            path = path.replace("products", "fuzzed")
        _request(running_proxy, method, path, body, headers)

    check()


# Every input the second round of probes found, on every route: hostile names in every path
# parameter, caller text with line breaks and escapes, out-of-range numbers, filters on
# embedshift's own payload keys under any spelling and nesting.
HOSTILE_NAMES = ["..%2Farticles%2Fv1", "*", "v%2A", "..", "v1%00", "%C2%B2", "%D9%A3",
                 "%229010%22", "9010", "v1", "v2", "products", "%0Arev%2099", "%1B%5B2K",
                 "ui.js", "pause", "abort"]
path_names = st.one_of(st.sampled_from(HOSTILE_NAMES),
                       st.text(min_size=1, max_size=12).map(lambda s: quote(s, safe="")))
caller_text = st.one_of(st.text(max_size=30), st.sampled_from([
    "ok\nrev 99  root  stable v1 -> v9\x1b[2K", "\r\n\x00\x7f\u2028", "\x1b]0;owned\x07"]))
numbers = st.one_of(st.floats(allow_nan=False), st.sampled_from([-0.0, 1e308, -1e308, 2**63]),
                    st.integers())
RESERVED_KEYS = ["_embedshift.text", "_embedshift.doc_id", '"_embedshift".text', "_embedshift",
                 "_embedshift[].text", "category"]
reserved_conditions = st.fixed_dictionaries({
    "key": st.sampled_from(RESERVED_KEYS),
    "match": st.fixed_dictionaries({"text": st.sampled_from(["jacket", "zzzz"])})})
nested_filters: st.SearchStrategy[Any] = st.recursive(
    st.fixed_dictionaries({"must": st.lists(reserved_conditions, min_size=1, max_size=2)}),
    lambda inner: st.sampled_from(["must", "should", "must_not"]).flatmap(
        lambda clause: st.fixed_dictionaries({clause: st.lists(
            st.one_of(reserved_conditions, inner), min_size=1, max_size=2)})), max_leaves=4)
hostile_json = st.fixed_dictionaries({}, optional={
    "query": st.just("warm jacket"), "reason": caller_text, "percent": numbers,
    "steps": st.lists(numbers, max_size=3), "every_s": numbers, "workers": numbers,
    "sample": numbers, "filter": nested_filters, "user_id": caller_text,
    "documents": st.lists(st.fixed_dictionaries(
        {"id": st.one_of(numbers, caller_text), "text": caller_text}), max_size=2),
    "alerts": st.lists(st.fixed_dictionaries(
        {"status": st.sampled_from(["firing", "resolved"]),
         "labels": st.fixed_dictionaries({"embedshift_alias": st.sampled_from(["fuzzed", ".."])}),
         "annotations": st.fixed_dictionaries({"summary": caller_text})}), max_size=2)})


def _names_reserved(node: Any) -> bool:
    if isinstance(node, dict):
        if str(node.get("key", "")).replace('"', "").startswith("_embedshift"):
            return True
        return any(_names_reserved(value) for value in node.values())
    return isinstance(node, list) and any(_names_reserved(value) for value in node)


def test_no_hostile_name_text_or_number_produces_a_server_error_or_a_leak(
        running_proxy: int, capsys: pytest.CaptureFixture[str]) -> None:
    seen: Counter[str] = Counter()

    search = next(route for route in ROUTES if route.path.endswith("/search"))
    listing = next(route for route in ROUTES if route.path == "/admin/aliases")
    routes = st.sampled_from([*ROUTES, *[search] * 8, *[listing] * 4])

    @settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
    @given(route=routes, names=st.fixed_dictionaries(
               {name: path_names for name in ("version", "doc_id", "asset", "action")}),
           body=hostile_json, actor=st.one_of(st.none(), header_bytes),
           authorised=st.booleans())
    def check(route: Any, names: dict[str, str], body: dict[str, Any], actor: bytes | None,
              authorised: bool) -> None:
        path = route.path.replace("{alias}", "fuzzed" if route.admin else "products")
        for name, value in names.items():
            path = path.replace(f"{{{name}}}", value)
        headers = {"Content-Type": b"application/json"}
        if actor is not None:
            headers["X-Embedshift-Actor"] = actor
        if authorised:
            headers["Authorization"] = f"Bearer {ADMIN_TOKEN}".encode()
        response = request(running_proxy, route.method, path, json.dumps(body).encode(),
                           headers=headers)
        assert response.status < 500, (route.method, path, body, response.body[:300])
        assert b"\x1b" not in response.body and b"\x00" not in response.body
        if route.path.endswith("/search") and _names_reserved(body.get("filter")):
            assert response.status == 400, (body, response.body[:300])  # never a hit count
            seen["reserved filter refused"] += 1
        seen[f"{response.status // 100}xx {'admin' if route.admin else 'public'}"] += 1
        _request(running_proxy, route.method, path, json.dumps(body).encode(), headers)

    check()
    assert min(seen["reserved filter refused"], seen["2xx admin"], seen["2xx public"],
               seen["4xx admin"], seen["4xx public"]) > 0, seen  # the fuzz reached them all
    logged = capsys.readouterr()
    for text in (logged.out, logged.err):
        assert "\x1b" not in text and ADMIN_TOKEN not in text and OVERRIDE_TOKEN not in text


# The Qdrant port, fuzzed the same way: raw bytes, and JSON shaped like Qdrant's bodies with
# hostile values, on every route it serves, writes included (with the write key, into an
# engine of the fuzz's own). The assertion is the native port's: no 5xx, the error in Qdrant's
# shape, nothing from the engine or a traceback.
QDRANT_WRITE_KEY = "qdrant-fuzz-write-key"
qdrant_fields = st.fixed_dictionaries({}, optional={
    "query": st.one_of(json_values, st.fixed_dictionaries(
        {"text": st.text(max_size=20), "model": st.just("any")}),
        st.lists(numbers, min_size=1, max_size=4)),
    "vector": st.one_of(json_values, st.lists(numbers, max_size=4)),
    "limit": numbers, "offset": st.one_of(numbers, st.text(max_size=8), json_values),
    "filter": st.one_of(json_values, nested_filters), "using": json_values,
    "prefetch": json_values, "with_payload": json_values, "with_vector": json_values,
    "ids": st.lists(st.one_of(numbers, st.text(max_size=8)), max_size=3),
    "points": st.one_of(json_values, st.lists(st.fixed_dictionaries(
        {"id": st.one_of(numbers, st.text(max_size=8)), "vector": json_values},
        optional={"payload": json_values}), max_size=2)),
    "payload": json_values, "keys": json_values, "searches": st.lists(json_values, max_size=3),
    "positive": st.lists(st.one_of(numbers, st.text(max_size=8)), max_size=2),
    "group_by": json_values, "vectors": json_values, "field_name": json_values})
document = st.fixed_dictionaries({"text": caller_text, "model": st.just("any")})
ids = st.lists(st.integers(0, 50), min_size=1, max_size=3)
query = st.fixed_dictionaries({"query": document, "limit": st.integers(1, 20)},
                              optional={"filter": nested_filters, "with_payload": st.booleans()})
VALID = {  # a body each route serves, so the fuzz reaches the handlers' work, not only refusals
    ("PUT", "/collections/{name}"): st.fixed_dictionaries({"vectors": st.fixed_dictionaries(
        {"size": st.just(4), "distance": st.sampled_from(["Cosine", "Dot"])})}),
    ("PUT", "/collections/{name}/index"): st.fixed_dictionaries(
        {"field_name": st.sampled_from(["k", "_embedshift.text"]),
         "field_schema": st.sampled_from(["keyword", "integer"])}),
    ("PUT", "/collections/{name}/points"): st.fixed_dictionaries({"points": st.lists(
        st.fixed_dictionaries({"id": st.integers(0, 50), "vector": document}, optional={
            "payload": st.dictionaries(st.sampled_from(["k", "colour"]), caller_text)}),
        min_size=1, max_size=2)}),
    ("POST", "/collections/{name}/points"): st.fixed_dictionaries({"ids": ids}),
    ("POST", "/collections/{name}/points/delete"): st.fixed_dictionaries({"points": ids}),
    ("POST", "/collections/{name}/points/query"): query,
    ("POST", "/collections/{name}/points/query/batch"): st.fixed_dictionaries(
        {"searches": st.lists(query, min_size=1, max_size=3)}),
    ("POST", "/collections/{name}/points/query/groups"): query.map(
        lambda q: {**q, "group_by": "k"}),
    ("POST", "/collections/{name}/points/recommend"): st.fixed_dictionaries(
        {"positive": ids, "limit": st.integers(1, 10)}),
    ("POST", "/collections/{name}/points/scroll"): st.fixed_dictionaries(
        {"limit": st.integers(1, 20)}, optional={"offset": st.integers(0, 50),
                                                 "filter": nested_filters}),
    ("POST", "/collections/{name}/points/count"): st.fixed_dictionaries(
        {}, optional={"filter": nested_filters}),
    **{("POST", f"/collections/{{name}}/points/payload{tail}"): st.fixed_dictionaries(
        {"points": ids, "payload": st.dictionaries(st.sampled_from(["k", "n"]), caller_text),
         "keys": st.just(["k"])}) for tail in ("", "/delete", "/clear")},
    ("PUT", "/collections/{name}/points/payload"): st.fixed_dictionaries(
        {"points": ids, "payload": st.dictionaries(st.sampled_from(["k"]), caller_text)}),
}
qdrant_names = st.one_of(st.sampled_from(["products", "products", "own", "products_v1",
                                          "%00", "a" * 300, "..", "x%2Fy"]),
                         st.text(min_size=1, max_size=12).map(lambda s: quote(s, safe="")))


@pytest.fixture
def qdrant_ports(factory: ProxyFactory, tmp_path: Path, loop_run: Run
                 ) -> Iterator[tuple[int, int]]:
    """Qdrant's REST and gRPC APIs over a proxy on an engine of its own (what the fuzz writes
    disturbs no other test), the demo alias declared and three points written."""
    from proxy.qdrant_api.app import make_qdrant_app
    from proxy.qdrant_api.handlers import Parts
    from proxy.qdrant_grpc.server import GrpcEdge
    from proxy.vectors.edge import EdgeStore
    from proxy.web.keys import EMBEDDER, INGESTOR, READY, SEARCHER, TRACER

    run = loop_run
    run(factory.declare(percent=50))
    engine = EdgeStore(tmp_path / "qdrant")
    app, config, rules, _, _ = factory.app(engine=engine, data_dir=str(tmp_path / "data"),
                                           qdrant_write_key=QDRANT_WRITE_KEY)
    native = make_runner(app, config)

    async def serve() -> tuple[Any, int, GrpcEdge]:
        await native.setup()  # the native app's start-up runs (rules read, versions ready)
        qdrant = make_qdrant_app(config, app[SEARCHER], app[TRACER], app[INGESTOR],
                                 app[EMBEDDER], lifecycle=app[READY])
        runner = make_runner(qdrant, config)
        await runner.setup()
        site = GuardedSite(runner, replace(config, port=0))
        await site.start()
        edge = GrpcEdge(Parts(config, app[SEARCHER], app[TRACER], app[INGESTOR], app[EMBEDDER],
                              app[READY]), "127.0.0.1", 0)
        await edge.start(site.connections)
        return runner, site.port, edge

    runner, port, edge = run(serve())
    written = request(port, "PUT", "/collections/products/points", json.dumps({"points": [
        {"id": n, "vector": {"text": text, "model": "any"}} for n, text in enumerate(
            ["a glacier lake", "a harbour crane", "a desert road"])]}).encode(),
        headers={"api-key": QDRANT_WRITE_KEY.encode()})
    assert written.status == 200, written.body  # both versions' collections hold points
    yield port, edge.port
    run(edge.stop(0))
    run(runner.cleanup())
    run(native.cleanup())
    run(rules.aclose())
    run(engine.close())


@pytest.fixture
def running_qdrant(qdrant_ports: tuple[int, int]) -> int:
    return qdrant_ports[0]


@pytest.fixture
def running_qdrant_grpc(qdrant_ports: tuple[int, int]) -> int:
    return qdrant_ports[1]


def _qdrant_request(port: int, method: str, path: str, body: bytes,
                    headers: dict[str, bytes]) -> int:
    response = request(port, method, path, body, headers=headers)
    assert response.status < 500, (method, path, body[:200], response.body[:300])
    if response.status >= 400 and path not in ("/healthz", "/livez", "/readyz"):
        answer = response.json()  # Qdrant's error shape
        assert set(answer) == {"status", "time"} and "error" in answer["status"], answer
        assert "Traceback" not in answer["status"]["error"]
        assert QDRANT_WRITE_KEY not in answer["status"]["error"]
    return response.status


def test_no_input_on_the_qdrant_port_produces_a_server_error(
        running_qdrant: int, capsys: pytest.CaptureFixture[str]) -> None:
    from proxy.qdrant_api.app import PROBES, WRITES
    from proxy.qdrant_api.app import ROUTES as QDRANT_ROUTES

    routes = st.sampled_from([(method, path) for method, path, _ in
                              [*WRITES, *PROBES, *QDRANT_ROUTES]])
    seen: Counter[str] = Counter()

    @settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck))
    @given(route=routes, name=st.one_of(st.just("products"), qdrant_names),
           point=st.one_of(st.integers(0, 50).map(str), path_names),
           headers=st.one_of(st.just({}), hostile_headers), data=st.data())
    def check(route: tuple[str, str], name: str, point: str, headers: dict[str, bytes],
              data: st.DataObject) -> None:
        method, path = route
        valid = VALID.get(route, st.just({}))
        body = data.draw(st.one_of(valid, valid, qdrant_fields, hostile_bodies, json_values))
        keyed = data.draw(st.sampled_from([True, True, False]))
        path = path.replace("{name}", name).replace("{key}", point)
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        if keyed:
            headers = {**headers, "api-key": QDRANT_WRITE_KEY.encode()}
        status = _qdrant_request(running_qdrant, method, path, raw, headers)
        seen[f"{method} {status // 100}xx"] += 1

    check()
    assert min(seen["POST 2xx"], seen["PUT 2xx"], seen["GET 2xx"], seen["POST 4xx"],
               seen["PUT 4xx"]) > 0, seen  # the fuzz reached reads and writes that succeed
    logged = capsys.readouterr()
    for text in (logged.out, logged.err):
        assert "Traceback" not in text and QDRANT_WRITE_KEY not in text


# -- Qdrant's gRPC API: messages of the right kind with hostile values, and bytes that are none

def _grpc_strategies() -> Any:
    from qdrant_client import grpc as pb

    floats = st.floats(width=32)  # NaN and infinities too
    names = st.one_of(st.sampled_from(["products", "products", "own", "products_v1", "", "a/b",
                                       "a" * 300, "\x00"]), st.text(max_size=12))
    point_ids = st.one_of(st.integers(0, 2**64 - 1).map(lambda n: pb.PointId(num=n)),
                          caller_text.map(lambda u: pb.PointId(uuid=u)),
                          st.integers(0, 50).map(lambda n: pb.PointId(num=n)))
    vectors = st.one_of(
        caller_text.map(lambda t: pb.VectorInput(document=pb.Document(text=t, model="any"))),
        st.lists(floats, max_size=400).map(lambda d: pb.VectorInput(dense=pb.DenseVector(
            data=d))),
        st.tuples(st.lists(st.integers(0, 2**32 - 1), max_size=4),
                  st.lists(floats, max_size=4)).map(lambda iv: pb.VectorInput(
                      sparse=pb.SparseVector(indices=iv[0], values=iv[1]))),
        point_ids.map(lambda p: pb.VectorInput(id=p)))
    queries = st.one_of(vectors.map(lambda v: pb.Query(nearest=v)),
                        st.sampled_from([0, 1, 7]).map(lambda f: pb.Query(fusion=cast(Any, f))),
                        st.lists(vectors, max_size=2).map(lambda p: pb.Query(
                            recommend=pb.RecommendInput(positive=p))))
    filters = st.lists(st.tuples(st.one_of(st.sampled_from(RESERVED_KEYS), caller_text),
                                 caller_text), max_size=2).map(lambda kv: pb.Filter(must=[
                                     pb.Condition(field=pb.FieldCondition(
                                         key=k, match=pb.Match(keyword=v))) for k, v in kv]))
    payload = st.dictionaries(st.one_of(st.sampled_from(["_embedshift", "k"]), caller_text),
                              caller_text.map(lambda v: pb.Value(string_value=v)), max_size=2)
    prefetches = st.recursive(
        st.builds(pb.PrefetchQuery, query=queries, limit=st.integers(0, 2**64 - 1),
                  using=st.one_of(st.just(""), caller_text)),
        lambda inner: st.builds(pb.PrefetchQuery, prefetch=st.lists(inner, max_size=2),
                                query=queries), max_leaves=4)
    optional = {"filter": filters, "limit": st.integers(0, 2**64 - 1),
                "offset": st.integers(0, 2**64 - 1), "using": caller_text,
                "score_threshold": floats, "prefetch": st.lists(prefetches, max_size=2),
                "with_payload": st.lists(caller_text, max_size=2).map(
                    lambda keys: pb.WithPayloadSelector(include=pb.PayloadIncludeSelector(
                        fields=keys)))}

    def points_message(kind: Any, **fields: Any) -> Any:
        return st.fixed_dictionaries({"collection_name": names, **fields}).map(
            lambda given: kind(**given))

    points = st.builds(lambda i, v, p: pb.PointStruct(id=i, vectors=pb.Vectors(
        vector=pb.Vector(document=pb.Document(text=v, model="any"))), payload=p),
        point_ids, caller_text, payload)
    selector = st.lists(point_ids, max_size=3).map(
        lambda ids: pb.PointsSelector(points=pb.PointsIdsList(ids=ids)))
    return {
        "/qdrant.Points/Query": st.fixed_dictionaries(
            {"collection_name": names}, optional={"query": queries, **optional}).map(
                lambda given: pb.QueryPoints(**cast(dict[str, Any], given))),
        "/qdrant.Points/Upsert": points_message(pb.UpsertPoints,
                                                points=st.lists(points, max_size=2)),
        "/qdrant.Points/Get": points_message(pb.GetPoints, ids=st.lists(point_ids, max_size=3)),
        "/qdrant.Points/Scroll": points_message(pb.ScrollPoints, limit=st.integers(0, 2**32 - 1),
                                                filter=filters),
        "/qdrant.Points/Count": points_message(pb.CountPoints, filter=filters),
        "/qdrant.Points/Delete": points_message(pb.DeletePoints, points=selector),
        "/qdrant.Points/SetPayload": points_message(pb.SetPayloadPoints, payload=payload,
                                                    points_selector=selector),
        "/qdrant.Points/CreateFieldIndex": points_message(
            pb.CreateFieldIndexCollection, field_name=caller_text,
            field_type=st.integers(0, 20)),
        "/qdrant.Points/DeleteFieldIndex": points_message(pb.DeleteFieldIndexCollection,
                                                          field_name=caller_text),
        "/qdrant.Collections/Create": points_message(
            pb.CreateCollection, vectors_config=st.builds(
                lambda size, distance: pb.VectorsConfig(params=pb.VectorParams(
                    size=size, distance=distance)),
                st.integers(0, 2**64 - 1), st.integers(0, 9))),
        "/qdrant.Collections/Get": points_message(pb.GetCollectionInfoRequest),
    }


def test_no_message_on_the_grpc_port_produces_an_internal_error(
        running_qdrant_grpc: int, capsys: pytest.CaptureFixture[str]) -> None:
    import grpc

    messages = _grpc_strategies()
    seen: Counter[str] = Counter()
    with grpc.insecure_channel(f"127.0.0.1:{running_qdrant_grpc}") as channel:
        @settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
        @given(path=st.sampled_from(sorted(messages)), data=st.data(),
               keyed=st.sampled_from([True, True, False]), raw=st.booleans())
        def check(path: str, data: st.DataObject, keyed: bool, raw: bool) -> None:
            body = data.draw(st.binary(max_size=64)) if raw and path.endswith("Query") else \
                data.draw(messages[path]).SerializeToString()
            metadata = [("api-key", QDRANT_WRITE_KEY)] if keyed else []
            try:
                channel.unary_unary(path)(body, metadata=metadata, timeout=60)
                seen["OK"] += 1
            except grpc.RpcError as exc:
                code, details = exc.code(), exc.details() or ""
                assert code not in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN), (
                    path, details)
                assert "Traceback" not in details and QDRANT_WRITE_KEY not in details
                seen[code.name] += 1

        check()
    assert min(seen["OK"], seen["INVALID_ARGUMENT"]) > 0, seen  # reached work and refusals
    logged = capsys.readouterr()
    for text in (logged.out, logged.err):
        assert "Traceback" not in text and QDRANT_WRITE_KEY not in text
