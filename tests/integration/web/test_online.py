"""Feedback joins its answer on any proxy, interleaving judges users' quality, the guard acts on it.

Real proxies on a real Redis and the demo's Qdrant engine and ONNX models. Simulated users click
with a cascade over what stable ranks first for their query (asked of it by override): the
test's ground truth, so a candidate whose answers are reversed (fast, whole, error-free and worse)
loses on users' evidence alone.
"""

from __future__ import annotations

import asyncio
import random
import uuid
from typing import Any

from msgspec.structs import replace

from rollout_rules.model import Experiment, GuardPolicy, Rollout
from rollout_rules.online import Finding, Team, preference, team_draft
from tests.eventually import eventually_async
from tests.integration.conftest import ADMIN_TOKEN, OVERRIDE_TOKEN, Proxy, ProxyFactory
from tests.integration.traffic import WORDS

AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
FEEDBACK_KEY = "test-feedback-key"
KEYED = {"Authorization": f"Bearer {FEEDBACK_KEY}"}
FAST = GuardPolicy(min_requests=20, window_s=30)


async def rule(proxies: ProxyFactory) -> Rollout:
    return await proxies.rule()


async def feedback(proxy: Proxy, events: list[dict[str, Any]]) -> dict[str, Any]:
    answer = await proxy.client.post("/v1/feedback", json={"events": events}, headers=KEYED)
    assert answer.status == 200, await answer.text()
    found: dict[str, Any] = await answer.json()
    return found


async def remembered(proxy: Proxy, trace_id: str) -> bool:
    """Whether the answer has reached the shared log (it is flushed within 0.2 s)."""
    found = await feedback(proxy, [{"trace_id": trace_id, "event": "click",
                                    "doc_id": "no such document"}])  # refused, if known
    return bool(found["totals"].get("unknown_trace", 0) == 0)


async def test_feedback_for_10000_answers_is_joined_exactly_across_two_proxies(
        proxies: ProxyFactory) -> None:
    await proxies.declare()
    first = await proxies.start(feedback_key=FEEDBACK_KEY, feedback_events="add_to_cart")
    second = await proxies.start(feedback_key=FEEDBACK_KEY, feedback_events="add_to_cart")
    answers = []
    for n in range(10_000):
        found = await first.search(query=WORDS[n % 7], user_id=f"user-{n % 1000}", limit=3)
        answers.append((found["trace_id"], found["hits"][0]["id"]))
    await eventually_async(lambda: remembered(second, answers[-1][0]))
    clicks = [{"trace_id": t, "event": "click", "doc_id": d, "position": 0,
               "event_id": f"e{n}"} for n, (t, d) in enumerate(answers)]
    totals: dict[str, int] = {}
    for start in range(0, len(clicks), 1000):
        for outcome, n in (await feedback(second, clicks[start:start + 1000]))["totals"].items():
            totals[outcome] = totals.get(outcome, 0) + n
    assert totals == {"counted": 10_000}
    again = await feedback(first, clicks[:1000])  # replayed, through the other proxy
    assert again["totals"] == {"replayed": 1000}
    odd: list[dict[str, Any]] = [{"trace_id": uuid.uuid4().hex, "event": "click", "doc_id": "x"}
                                 for _ in range(50)]
    odd.append({"trace_id": answers[0][0], "event": "convert", "doc_id": answers[0][1],
                "at": "2001-01-01T00:00:00Z"})  # before the answer
    odd.append({"trace_id": answers[1][0], "event": "click", "doc_id": "not-shown"})
    odd.append({"trace_id": answers[2][0], "event": "add_to_cart", "doc_id": answers[2][1],
                "value": 2.5})  # an event the proxy was told to count
    found = await feedback(second, odd)
    assert found["totals"] == {"counted": 1, "refused": 2, "unknown_trace": 50}
    reasons = [o["reason"] for o in found["not_counted"] if o["outcome"] == "refused"]
    assert reasons == ["its time is before the answer it is about",
                       'doc_id "not-shown" was not in the answer']
    status = await (await first.client.get("/admin/aliases/products", headers=AUTH)).json()
    v1 = status["online"]["v1"]
    assert v1["answers"] == 10_000 and v1["click_through"] == 1.0 and v1["mrr"] == 1.0


async def test_feedback_needs_its_key_and_names_what_is_wrong(proxies: ProxyFactory) -> None:
    await proxies.declare()
    closed = await proxies.start()
    answer = await closed.client.post("/v1/feedback", json={"events": []})
    assert "EMBEDSHIFT_FEEDBACK_KEY" in await answer.text()
    proxy = await proxies.start(feedback_key=FEEDBACK_KEY, feedback_ttl_s=0.5)
    assert (await proxy.client.post("/v1/feedback", json={"events": []})).status == 401
    found = await proxy.search()
    bad = await proxy.client.post("/v1/feedback", headers=KEYED, json={"events": [
        {"trace_id": found["trace_id"], "event": "click", "doc_id": 1},
        {"trace_id": found["trace_id"], "event": "hover", "doc_id": 1}]})
    assert bad.status == 400 and "events[1].event" in await bad.text()
    await asyncio.sleep(1.0)  # the answer is forgotten: late feedback is answered, not counted
    late = await feedback(proxy, [{"trace_id": found["trace_id"], "event": "click",
                                   "doc_id": found["hits"][0]["id"]}])
    assert late["totals"] == {"unknown_trace": 1}


async def _truth(proxy: Proxy, text: str, version: str = "v1", limit: int = 3) -> list[Any]:
    """What ``version`` ranks first for ``text`` (stable's top 3: the simulated users' idea of
    relevant)."""
    answer = await proxy.client.post(
        "/v1/aliases/products/search", json={"query": text, "limit": limit,
                                             "version": version},
        headers={"X-Embedshift-Override-Token": OVERRIDE_TOKEN})
    assert answer.status == 200, await answer.text()
    return [hit["id"] for hit in (await answer.json())["hits"]]


def _cascade(shown: list[Any], relevant: list[Any], rng: random.Random) -> list[int]:
    """Positions clicked: each result read in turn, a relevant one clicked (0.8), then the
    user stops (0.7); after one not clicked the user reads on (0.85)."""
    clicked = []
    for position, doc in enumerate(shown):
        if doc in relevant and rng.random() < 0.8:
            clicked.append(position)
            if rng.random() < 0.7:
                break
        elif rng.random() >= 0.85:
            break
    return clicked


async def test_a_candidate_worse_in_ranking_only_is_rolled_back_on_users_evidence(
        proxies: ProxyFactory) -> None:
    declared = await proxies.declare(guard=FAST, allow_request=True,
                                     experiment=Experiment(share=1.0))
    proxy = await proxies.start(feedback_key=FEEDBACK_KEY, guard_tick_s=0.2)
    oracle = await proxies.start(feedback_ttl_s=0, guard_tick_s=0)  # remembers no answer
    proxy.store.reversed.add(declared.version("v2").target.collection)
    rng = random.Random(7)
    for n in range(400):
        text = f"{rng.choice(WORDS)} {rng.choice(WORDS)} {n}"
        relevant = await _truth(oracle, text)
        found = await proxy.search(query=text, user_id=f"user-{n % 80}")
        if (await rule(proxies)).state == "rolled_back":
            break
        assert found["rollout"]["reason"] == "interleaved"
        shown = [hit["id"] for hit in found["hits"]]
        events = [{"trace_id": found["trace_id"], "event": "click", "doc_id": shown[p]}
                  for p in _cascade(shown, relevant, rng)]
        if events:
            await asyncio.sleep(0.25)  # the answer reaches the log
            assert (await feedback(proxy, events))["totals"] == {"counted": len(events)}
    await eventually_async(lambda: _rolled_back(proxies), timeout_s=10)
    after = await rule(proxies)
    assert after.updated_by == "guard", after
    assert after.reason.startswith("guard: online quality: interleaving: v1 preferred"), after
    history = await (await proxy.client.get("/admin/aliases/products/history",
                                            headers=AUTH)).json()
    guard = [e for e in history if e["actor"] == "guard"]
    assert len(guard) == 1 and "online quality" in guard[0]["reason"]
    status = await (await proxy.client.get("/admin/aliases/products", headers=AUTH)).json()
    figures = status["guard"]["figures"] if status["guard"] else {}
    # operationally healthy throughout: nothing failed, nothing fell back
    assert figures.get("test_error_ratio") in (0, None), figures
    assert figures.get("test_fallback_ratio") in (0, None), figures


async def _rolled_back(proxies: ProxyFactory) -> bool:
    return (await rule(proxies)).state == "rolled_back"


async def test_a_flood_of_forged_clicks_from_one_user_moves_no_verdict(
        proxies: ProxyFactory) -> None:
    """Honest users show no preference (half click a result each team placed); one user
    clicks, in 300 answers of their own, a result stable's team placed. Capped at 20, the
    evidence stays undecided; the 280 capped clicks would have made it a loss."""
    await proxies.declare(guard=replace(FAST, min_requests=50), allow_request=True,
                          experiment=Experiment(share=1.0))
    proxy = await proxies.start(feedback_key=FEEDBACK_KEY, guard_tick_s=0.2)
    oracle = await proxies.start(feedback_ttl_s=0, guard_tick_s=0)  # remembers no answer
    rng = random.Random(11)  # the texts; the teams come from trace ids, whatever they are

    async def answer_and_click(user: str, team: Team) -> dict[str, Any]:
        """One search, and a click on a result ``team`` placed (rebuilt from the trace id,
        as the proxy can)."""
        text = f"{rng.choice(WORDS)} {rng.choice(WORDS)}"
        found = await proxy.search(query=text, user_id=user)
        shown = [hit["id"] for hit in found["hits"]]
        stable, candidate = [await _truth(oracle, text, version, limit=10)
                             for version in ("v1", "v2")]
        merged = team_draft(stable, candidate, len(shown), found["trace_id"])
        assert [doc for doc, _ in merged] == shown  # the answer, rebuilt from its trace
        position = next(p for p, (_, placed) in enumerate(merged) if placed is team)
        return {"trace_id": found["trace_id"], "event": "click", "doc_id": shown[position]}

    honest = [await answer_and_click(f"honest-{n}", Team(n % 2)) for n in range(200)]
    forged = [await answer_and_click("mallory", Team.BASELINE) for _ in range(300)]
    await eventually_async(lambda: remembered(proxy, forged[-1]["trace_id"]))
    assert (await feedback(proxy, honest))["totals"] == {"counted": 200}
    assert (await feedback(proxy, forged))["totals"] == {"counted": 20, "capped": 280}
    await asyncio.sleep(1.0)  # a few guard ticks on the final counts
    after = await rule(proxies)
    assert after.state == "ramping", after.reason
    status = await (await proxy.client.get("/admin/aliases/products", headers=AUTH)).json()
    pair = status["online"]["v2~v1"]
    assert (pair["answers"], pair["wins"], pair["losses"], pair["ties"]) == (500, 100, 120, 0)
    alpha, least = after.guard.alpha, after.guard.min_requests
    assert preference(int(pair["wins"]), int(pair["losses"]), alpha=alpha,
                      min_answers=least) is not Finding.WORSE
    assert preference(int(pair["wins"]), int(pair["losses"]) + 280, alpha=alpha,
                      min_answers=least) is Finding.WORSE


async def test_re_queries_alone_flag_a_candidate_worse_in_ranking_only(
        proxies: ProxyFactory) -> None:
    """No feedback at all: a user whose answer holds nothing relevant in its top 3 searches
    again at once with other words. Half the users are on a candidate whose answers are
    reversed; its re-query rate rolls it back."""
    declared = await proxies.declare(percent=50, guard=FAST, allow_request=True)
    proxy = await proxies.start(guard_tick_s=0.2)
    oracle = await proxies.start(feedback_ttl_s=0, guard_tick_s=0)  # remembers no answer
    proxy.store.reversed.add(declared.version("v2").target.collection)
    rng = random.Random(5)
    again = {"v1": 0, "v2": 0}
    for n in range(300):
        if await _rolled_back(proxies):
            break
        text = f"{rng.choice(WORDS)} {rng.choice(WORDS)} {n}"
        found = await proxy.search(query=text, user_id=f"user-{n}", limit=10)
        relevant = await _truth(oracle, text)
        if not set(relevant) & {hit["id"] for hit in found["hits"][:3]}:
            again[found["model_version"]] += 1
            await proxy.search(query=f"{text} {rng.choice(WORDS)}", user_id=f"user-{n}")
    await eventually_async(lambda: _rolled_back(proxies), timeout_s=10)
    after = await rule(proxies)
    assert after.updated_by == "guard", after
    assert after.reason.startswith("guard: online quality: re-queries after"), after
    assert again["v2"] > 3 * again["v1"], again
