"""The proxy over real HTTP routes, falls back, traces, caches and refuses as documented."""

from __future__ import annotations

import asyncio
import json
import math
import re
from functools import partial
from typing import Any

import pytest
from msgspec.structs import replace

from proxy.control.operator import Operator
from proxy.models.catalog import default_rollout
from proxy.serving.readiness import collection_problems
from proxy.state.redis_server import EmbeddedRedis
from proxy.web.keys import WATCHER
from proxy.web.routes import ROUTES
from rollout_rules import ops
from rollout_rules.bucket import bucket
from tests.eventually import eventually
from tests.integration.conftest import ADMIN_TOKEN, OVERRIDE_TOKEN, Engine, Proxy, ProxyFactory

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("percent", [0, 10, 50, 100])
async def test_the_share_of_users_on_v2_follows_the_percent(proxies: ProxyFactory,
                                                            percent: int) -> None:
    await proxies.declare(percent=percent)
    proxy = await proxies.start()
    users = 400
    answers = await asyncio.gather(*(proxy.search(user_id=f"user-{i}") for i in range(users)))
    on_v2 = sum(a["model_version"] == "v2" for a in answers)
    sigma = math.sqrt(users * (percent / 100) * (1 - percent / 100))
    assert abs(on_v2 - users * percent / 100) <= 4 * sigma + 1e-9, (percent, on_v2)
    for i, answer in enumerate(answers):
        assert answer["rollout"]["bucket"] == bucket("products", f"user-{i}")
        assert answer["collection"] == f"products_{answer['model_version']}"
        assert answer["hits"] and answer["hits"][0]["payload"]["title"]


async def test_users_stick_to_their_version_across_instances(proxies: ProxyFactory) -> None:
    await proxies.declare(percent=30)
    first, second = await proxies.start(), await proxies.start()
    for i in range(60):
        a = await first.search(user_id=f"u{i}")
        b = await second.search(user_id=f"u{i}", query="a different query")
        assert a["model_version"] == b["model_version"]
        assert a["rollout"]["bucket"] == b["rollout"]["bucket"]


async def test_a_rule_change_reaches_another_instance_within_100_ms(proxies: ProxyFactory
                                                                    ) -> None:
    await proxies.declare(percent=1)
    writer, reader = await proxies.start(), await proxies.start()
    watcher = reader.app[WATCHER]
    delays = []
    for percent in (5, 10, 20, 40, 80):
        await writer.rules.apply("products", partial(ops.set_percent, percent=percent),
                                 "tests", "ramp")
        delays.append(await eventually(
            lambda p=percent: watcher.rollouts["products"].percent == p, timeout_s=1))
    assert max(delays) < 0.1, f"propagation delays {delays}"


async def test_redis_killed_mid_traffic_fails_no_query_and_recovers(
        own_redis: tuple[EmbeddedRedis, ProxyFactory]) -> None:
    server, proxies = own_redis
    await proxies.declare(percent=50)
    proxy = await proxies.start(refresh_interval_s=0.2)
    watcher = proxy.app[WATCHER]
    statuses: list[int] = []

    async def traffic(count: int) -> None:
        for i in range(count):
            response = await proxy.client.post("/v1/aliases/products/search",
                                               json={"query": "tent", "user_id": f"u{i}"})
            statuses.append(response.status)
            await asyncio.sleep(0.002)

    running = asyncio.gather(*(traffic(60) for _ in range(4)))
    await asyncio.sleep(0.05)
    server.kill()
    await eventually(lambda: not watcher.connected)
    ready = await (await proxy.client.get("/readyz")).json()
    assert ready["ready"] and ready["rules"]["store"].startswith("unreachable")
    metrics = await (await proxy.client.get("/metrics")).text()
    assert "embedshift_rules_store_up 0.0" in metrics
    await running
    assert statuses and set(statuses) == {200}, f"{statuses.count(200)}/{len(statuses)} ok"

    server.start()
    await proxy.rules.apply("products", partial(ops.set_percent, percent=70), "tests", "back")
    await eventually(lambda: watcher.rollouts["products"].percent == 70)
    # the listener may still be retrying a connection begun during the outage
    await eventually(lambda: watcher.connected)
    assert (await proxy.search(user_id="after"))["rollout"]["revision"] == 3


async def test_a_failing_candidate_is_answered_by_stable(proxies: ProxyFactory) -> None:
    await proxies.declare(percent=100)
    proxy = await proxies.start()
    assert (await proxy.search(user_id="a"))["model_version"] == "v2"
    proxy.store.broken.add("products_v2")
    answer = await proxy.search(user_id="a", query="a query v2 has not answered yet")
    assert (answer["model_version"], answer["rollout"]["reason"]) == ("v1", "fallback")
    assert answer["hits"]
    metrics = await (await proxy.client.get("/metrics")).text()
    assert 'embedshift_fallbacks_total{alias="products",version="v2"} 1.0' in metrics
    proxy.store.broken.add("products_v1")
    response = await proxy.client.post("/v1/aliases/products/search", json={"query": "tent"})
    assert response.status == 503
    assert (await response.json())["error"]["type"] == "BackendError"


async def test_a_store_that_hangs_gets_a_503_at_the_deadline(proxies: ProxyFactory) -> None:
    await proxies.declare(percent=100)
    proxy = await proxies.start(request_timeout_s=0.3)
    proxy.store.hanging.update({"products_v1", "products_v2"})
    response = await proxy.client.post("/v1/aliases/products/search", json={"query": "tent"})
    error = (await response.json())["error"]
    assert response.status == 503 and error["message"] == "no answer within 0.3s", error
    # one deadline for the request, not one per version tried: stable is never searched
    spans = {s.name: s for s in proxy.spans.get_finished_spans()}
    assert list(spans) == ["encode", "search products_v2", "POST /v1/aliases/{alias}/search"]
    for name in ("search products_v2", "POST /v1/aliases/{alias}/search"):
        assert spans[name].status.status_code.name == "ERROR", name


async def test_a_trace_continues_and_spans_carry_the_model_version(proxies: ProxyFactory
                                                                   ) -> None:
    await proxies.declare(percent=100)
    proxy = await proxies.start()
    trace_id, parent = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    response = await proxy.client.post(
        "/v1/aliases/products/search", json={"query": "stove", "user_id": "z"},
        headers={"traceparent": f"00-{trace_id}-{parent}-01"})
    answer = await response.json()
    assert answer["trace_id"] == trace_id
    spans = {s.name: s for s in proxy.spans.get_finished_spans()}
    server = spans["POST /v1/aliases/{alias}/search"]
    assert server.parent is not None and format(server.parent.span_id, "016x") == parent
    attributes = dict(server.attributes or {})
    assert attributes["feature_flag.result.variant"] == answer["model_version"] == "v2"
    assert attributes["feature_flag.result.reason"] == "bucket_in"
    assert attributes["embedshift.model.id"] == "sentence-transformers/all-MiniLM-L6-v2"
    for child in ("encode", "search products_v2"):
        parent_context, server_context = spans[child].parent, server.context
        assert parent_context is not None and server_context is not None
        assert parent_context.span_id == server_context.span_id
        assert dict(spans[child].attributes or {})["feature_flag.result.variant"] == "v2"
    metrics = await (await proxy.client.get("/metrics")).text()
    assert 'embedshift_requests_total{alias="products",reason="bucket_in",version="v2"} 1.0' \
        in metrics


async def test_an_unsampled_trace_records_no_span_at_all(proxies: ProxyFactory) -> None:
    """The caller's trace is not sampled: the server span does not record, and the stages start
    no spans of their own (they would be roots of new, sampled traces)."""
    await proxies.declare(percent=100)
    proxy = await proxies.start(result_cache_ttl_s=0)
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    response = await proxy.client.post(
        "/v1/aliases/products/search", json={"query": "a stove never asked", "user_id": "z"},
        headers={"traceparent": f"00-{trace_id}-00f067aa0ba902b7-00"})
    assert response.status == 200
    assert (await response.json())["trace_id"] == trace_id
    assert proxy.spans.get_finished_spans() == ()


async def test_repeated_queries_hit_the_vector_cache(proxies: ProxyFactory) -> None:
    await proxies.declare()
    proxy = await proxies.start(result_cache_ttl_s=0)  # every query reaches the encoder
    for _ in range(3):
        await proxy.search(query="  the   same words ")
    metrics = await (await proxy.client.get("/metrics")).text()
    assert 'embedshift_encode_cache_total{alias="products",result="hit",version="v1"} 2.0' \
        in metrics


@pytest.mark.parametrize(("body", "status", "field"), [
    ({"query": ""}, 400, None),
    ({"query": 5}, 400, "query"),
    ({"qury": "x"}, 400, "qury"),
    ({"query": "x", "limit": 0}, 400, "limit"),
    ({"query": "x", "limit": 1001}, 400, "limit"),
    ({"query": "x", "version": "v1"}, 401, None),  # choosing a version needs its token
    ({"query": "x", "filter": {"must": [{"key": 1}]}}, 400, "filter.must.0.key"),
    ({"query": "x" * 9000}, 400, None),
])
async def test_bad_requests_get_a_clear_4xx(proxies: ProxyFactory, body: dict[str, Any],
                                            status: int, field: str | None) -> None:
    await proxies.declare()
    proxy = await proxies.start()
    response = await proxy.client.post("/v1/aliases/products/search", json=body)
    error = (await response.json())["error"]
    assert response.status == status, error
    assert error.get("field") == field, error


async def test_malformed_bodies_unknown_aliases_and_oversize(proxies: ProxyFactory) -> None:
    await proxies.declare()
    proxy = await proxies.start()
    cases = [("/v1/aliases/products/search", b"{not json", 400),
             ("/v1/aliases/products/search", b"", 400),
             ("/v1/aliases/nope/search", b'{"query": "x"}', 404),
             ("/v1/aliases/products/search", b'{"query": "' + b"a" * 70_000 + b'"}', 413)]
    for path, data, status in cases:
        response = await proxy.client.post(path, data=data)
        assert response.status == status
        assert "error" in await response.json()


async def test_a_filter(proxies: ProxyFactory) -> None:
    await proxies.declare(percent=0)
    proxy = await proxies.start()
    answer = await proxy.search(query="sleeping", limit=5, filter={
        "must": [{"key": "category", "match": {"value": "sleep"}}]})
    assert {h["payload"]["category"] for h in answer["hits"]} == {"sleep"}


async def _forced(proxy: Proxy, version: str, token: str | None) -> tuple[int, Any]:
    headers = {"X-Embedshift-Version": version}
    if token is not None:
        headers["X-Embedshift-Override-Token"] = token
    response = await proxy.client.post("/v1/aliases/products/search", json={"query": "tent"},
                                       headers=headers)
    return response.status, await response.json()


async def test_a_forced_version_needs_the_token_and_the_rule(proxies: ProxyFactory) -> None:
    await proxies.declare(percent=0)
    off = await proxies.start(override_token=None)
    status, body = await _forced(off, "v2", OVERRIDE_TOKEN)
    assert status == 403 and "EMBEDSHIFT_OVERRIDE_TOKEN" in body["error"]["message"]
    proxy = await proxies.start()
    for token in (None, "wrong"):
        status, body = await _forced(proxy, "v2", token)
        assert status == 401 and OVERRIDE_TOKEN not in json.dumps(body)
    status, body = await _forced(proxy, "v2", OVERRIDE_TOKEN)  # the rule does not allow it
    assert (status, body["error"]["field"]) == (400, "version")


async def test_a_forced_version_never_outranks_rollback_or_pause(proxies: ProxyFactory) -> None:
    await proxies.declare(percent=10, allow_request=True)
    proxy = await proxies.start(refresh_interval_s=0.1)
    status, forced = await _forced(proxy, "v2", OVERRIDE_TOKEN)
    assert status == 200
    assert (forced["model_version"], forced["rollout"]["reason"]) == ("v2", "override")
    status, body = await _forced(proxy, "v9", OVERRIDE_TOKEN)
    assert (status, body["error"]["field"]) == (400, "version")
    operator = Operator(proxy.rules, "tests")
    for act, reason in ((operator.pause, "paused"), (operator.rollback, "rolled_back")):
        if reason == "rolled_back":
            await operator.resume("products", "again")
        await act("products", "an incident")
        await eventually(lambda r=reason: proxy.app[WATCHER].rollouts["products"].state == r)
        status, served = await _forced(proxy, "v2", OVERRIDE_TOKEN)
        assert status == 200
        assert (served["model_version"], served["rollout"]["reason"]) == ("v1", reason)


async def test_the_admin_api_needs_its_token_and_mirrors_the_cli(proxies: ProxyFactory) -> None:
    await proxies.declare(percent=10)
    proxy = await proxies.start()
    assert (await proxy.client.get("/admin/aliases")).status == 401
    wrong = {"Authorization": "Bearer nope"}
    assert (await proxy.client.get("/admin/aliases", headers=wrong)).status == 401
    auth = {"Authorization": f"Bearer {ADMIN_TOKEN}", "X-Embedshift-Actor": "pagerduty"}
    response = await proxy.client.post("/admin/aliases/products/percent", headers=auth,
                                       json={"percent": 20, "reason": "api ramp"})
    assert response.status == 200 and (await response.json())["after"]["percent"] == 20
    stale = await proxy.client.post("/admin/aliases/products/pause", headers=auth,
                                    json={"if_revision": 1})
    assert stale.status == 409
    rollback = await proxy.client.post("/admin/aliases/products/rollback", headers=auth,
                                       json={"reason": "alert"})
    assert (await rollback.json())["after"]["state"] == "rolled_back"
    history = await (await proxy.client.get("/admin/aliases/products/history",
                                            headers=auth)).json()
    assert [(e["actor"], e["reason"]) for e in history[:2]] == [("pagerduty", "alert"),
                                                                ("pagerduty", "api ramp")]
    bad = await proxy.client.post("/admin/aliases/products/rollback", headers=auth, json={})
    assert bad.status == 400 and (await bad.json())["error"]["field"] == "reason"


async def test_a_proxy_serves_an_admin_write_before_it_answers(proxies: ProxyFactory) -> None:
    """Read-your-writes: with its change feed and polling stopped, so that only the write's own
    re-read can bring the change, the proxy written through serves each change it answers."""
    await proxies.declare(percent=0)
    proxy = await proxies.start()
    watcher = proxy.app[WATCHER]
    await watcher.stop()
    auth = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    user = _users_on(["v1"], percent=50)[0]  # on stable until the ramp
    ramped = await proxy.client.post("/admin/aliases/products/percent", headers=auth,
                                     json={"percent": 100, "reason": "all in"})
    assert ramped.status == 200
    revision = (await ramped.json())["after"]["revision"]
    assert watcher.rollouts["products"].revision == revision
    assert (await proxy.search(user_id=user))["model_version"] == "v2"
    rolled = await proxy.client.post("/admin/aliases/products/rollback", headers=auth,
                                     json={"reason": "an incident"})
    assert rolled.status == 200 and watcher.rollouts["products"].state == "rolled_back"
    assert (await proxy.search(user_id=user))["model_version"] == "v1"


async def test_health_readiness_and_the_openapi_document(proxies: ProxyFactory) -> None:
    await proxies.declare()
    proxy = await proxies.start()
    assert (await proxy.client.get("/healthz")).status == 200
    ready = await (await proxy.client.get("/readyz")).json()
    assert ready["ready"] and ready["rules"]["store"] == "connected"
    assert ready["rules"]["aliases"] == {"products": 1}
    document = await (await proxy.client.get("/openapi.json")).json()
    assert "SearchRequest" in document["components"]["schemas"]
    for route in ROUTES:  # the document is derived from the route table: nothing missing
        operation = document["paths"][route.path][route.method.lower()]
        assert ("security" in operation) == route.admin, route.path
    search = document["paths"]["/v1/aliases/{alias}/search"]["post"]
    assert {"X-Embedshift-Version", "X-Embedshift-Override-Token"} <= {
        p["name"] for p in search["parameters"]}


async def test_a_version_that_does_not_match_its_collection_is_named(
        demo_engine: Engine) -> None:
    rollout = default_rollout("products")
    wrong = replace(rollout.versions[1], model="org/another-model")
    problem = await collection_problems(wrong, demo_engine.store)
    assert problem is not None and re.search(
        r"v2 is org/another-model, collection products_v2 was "
        r"encoded with sentence-transformers/all-MiniLM-L6-v2", problem), problem
    for version in rollout.versions:
        assert await collection_problems(version, demo_engine.store) is None


async def test_a_proxy_answers_what_a_second_reads(proxies: ProxyFactory) -> None:
    """Two instances sharing Redis serve the same hits for the same user and query."""
    await proxies.declare(percent=50)
    first, second = await proxies.start(), await proxies.start()
    for user in ("x1", "x2", "x3"):
        hits_a = [h["id"] for h in (await first.search(user_id=user))["hits"]]
        hits_b = [h["id"] for h in (await second.search(user_id=user))["hits"]]
        assert hits_a == hits_b


async def test_recent_answers_are_reused_per_version_until_the_backfill_moves(
        proxies: ProxyFactory) -> None:
    await proxies.declare(percent=50)
    proxy = await proxies.start(result_cache_ttl_s=60)
    on_v1, on_v2 = _users_on(["v1", "v2"])
    first = await proxy.search(user_id=on_v1, query="tent for two")
    proxy.spans.clear()
    again = await proxy.search(user_id=on_v1, query="  tent   for two ")
    assert again["hits"] == first["hits"] and again["model_version"] == "v1"
    names = [s.name for s in proxy.spans.get_finished_spans()]
    assert names == ["POST /v1/aliases/{alias}/search"], names  # no encode, no search
    server = proxy.spans.get_finished_spans()[0]
    assert dict(server.attributes or {})["embedshift.result_cache.hit"] is True
    other = await proxy.search(user_id=on_v2, query="tent for two")  # never v1's answer
    assert (other["model_version"], other["collection"]) == ("v2", "products_v2")
    assert [h["score"] for h in other["hits"]] != [h["score"] for h in first["hits"]]
    assert len(proxy.spans.get_finished_spans()) == 1 + 3  # v2 encoded and searched
    metrics = await (await proxy.client.get("/metrics")).text()
    assert 'embedshift_result_cache_total{alias="products",result="hit",version="v1"} 1.0' \
        in metrics
    assert 'embedshift_result_cache_total{alias="products",result="miss",version="v2"} 1.0' \
        in metrics

    # the backfill reports progress: v2's stored answers no longer count, v1's still do
    await proxy.rules.set_coverage("products", "v2", 299, 300)
    await proxy.app[WATCHER].refresh_all()
    proxy.spans.clear()
    await proxy.search(user_id=on_v2, query="tent for two")
    await proxy.search(user_id=on_v1, query="tent for two")
    assert [s.name for s in proxy.spans.get_finished_spans()] == [
        "search products_v2", "POST /v1/aliases/{alias}/search",
        "POST /v1/aliases/{alias}/search"]


async def test_a_stored_answer_expires_after_its_ttl(proxies: ProxyFactory) -> None:
    await proxies.declare()
    proxy = await proxies.start(result_cache_ttl_s=0.2)
    await proxy.search(query="headlamp")
    proxy.spans.clear()
    await proxy.search(query="headlamp")
    assert len(proxy.spans.get_finished_spans()) == 1
    await asyncio.sleep(0.25)
    await proxy.search(query="headlamp")
    assert "search products_v1" in [s.name for s in proxy.spans.get_finished_spans()]


def _users_on(versions: list[str], percent: float = 50) -> list[str]:
    """A user id routed to each version at ``percent`` (buckets are 1..10000)."""
    found: dict[str, str] = {}
    for i in range(1000):
        version = "v2" if bucket("products", f"user-{i}") <= percent * 100 else "v1"
        found.setdefault(version, f"user-{i}")
    return [found[v] for v in versions]


async def test_every_admin_route_refuses_a_request_without_the_token(
        proxies: ProxyFactory) -> None:
    """The route table says which routes are admin and the app guards exactly those: each one
    answers 401 without a token or with a wrong one, before doing anything; and every route
    that writes or reads operators' data is marked admin."""
    for route in ROUTES:
        if route.path.startswith(("/admin", "/alerts")) or "/documents" in route.path:
            assert route.admin, route.path
    await proxies.declare()
    proxy = await proxies.start()
    before = (await proxy.rules.get("products")).revision
    admin_routes = [r for r in ROUTES if r.admin]
    assert len(admin_routes) >= 20
    for route in admin_routes:
        path = route.path.format(alias="products", version="v1", doc_id="1", action="pause")
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": ADMIN_TOKEN}):
            answer = await proxy.client.request(route.method, path, headers=headers,
                                                json={"reason": "no"})
            assert answer.status == 401, (route.method, path, headers, answer.status)
    assert (await proxy.rules.get("products")).revision == before
