"""The fake and Redis remember answers and credit feedback alike: once, capped per user, in time."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from proxy.config import Settings
from proxy.state.answers import AnswerLog, Credit, MemoryAnswerLog, RedisAnswerLog
from proxy.state.client import connect
from proxy.state.redis_server import EmbeddedRedis
from proxy.state.rulestore import RedisRuleStore
from rollout_rules.online import RR_SCALE, Answer, Placed, Team, place


@pytest.fixture(params=["memory", "redis"])
async def log(request: pytest.FixtureRequest, prefix: str) -> AsyncIterator[AnswerLog]:
    if request.param == "memory":
        yield MemoryAnswerLog(cap=5)
        return
    server: EmbeddedRedis = request.getfixturevalue("redis_server")
    store = RedisRuleStore(connect(Settings(), server.url), prefix)
    try:
        yield RedisAnswerLog(store.client, prefix, cap=5)
    finally:
        await store.aclose()


def _answer(user: str = "u1", teams: tuple[int, ...] = ()) -> Answer:
    return Answer(alias="products", version="v2", revision=3, user=user, tenant=None,
                  at_ms=1_000, docs=("a", "b", 7), teams=teams,
                  baseline="v1" if teams else "")


def _click(trace: str, answer: Answer, doc: int | str, event_id: str | None = None,
           event: str = "click") -> Credit:
    placed = place(answer, doc, None)
    assert isinstance(placed, Placed)
    return Credit(trace_id=trace, answer=answer, event=event, placed=placed, event_id=event_id)


async def test_an_answer_is_recalled_by_its_trace_for_its_time(log: AnswerLog) -> None:
    answer = _answer()
    assert await log.remember([("t1", answer)], ttl_s=60) == 0
    assert await log.recall(["t1", "nope"]) == [answer, None]
    await log.remember([("brief", answer)], ttl_s=0.05)
    await asyncio.sleep(0.1)
    assert await log.recall(["brief"]) == [None]
    dropped = await log.remember([(f"t{n}", answer) for n in range(2, 9)], ttl_s=60)
    assert dropped >= 2 and await log.recall(["t1"]) == [None]  # the oldest went first
    assert (await log.counts("products"))["v2:answers"] == 9


async def test_each_event_counts_once_and_a_replay_not_at_all(log: AnswerLog) -> None:
    answer = _answer()
    await log.remember([("t1", answer)], ttl_s=60)
    assert await log.credit(_click("t1", answer, "b", "e1"), per_user=100, ttl_s=60) \
        == "counted"
    assert await log.credit(_click("t1", answer, "b", "e1"), per_user=100, ttl_s=60) \
        == "replayed"
    assert await log.credit(_click("t1", answer, "b", "e2"), per_user=100, ttl_s=60) \
        == "repeated"  # the same (answer, document, event) under another id
    assert await log.credit(_click("t1", answer, "a"), per_user=100, ttl_s=60) == "counted"
    assert await log.credit(_click("t1", answer, 7, event="convert"), per_user=100,
                            ttl_s=60) == "counted"
    counts = await log.counts("products")
    # the first click (position 1) makes the answer clicked, with its reciprocal rank; once
    assert (counts["v2:click"], counts["v2:clicked"], counts["v2:rr"]) == (2, 1, RR_SCALE // 2)
    assert counts["v2:convert"] == 1


async def test_one_user_moves_the_counts_by_the_cap_at_most(log: AnswerLog) -> None:
    answers = [(f"t{n}", _answer("flooder")) for n in range(4)]
    await log.remember(answers, ttl_s=60)
    outcomes = [await log.credit(_click(trace, answer, doc), per_user=5, ttl_s=60)
                for trace, answer in answers for doc in ("a", "b", 7)]
    assert outcomes.count("counted") == 5 and outcomes.count("capped") == 7
    other = _answer("someone else")
    await log.remember([("o1", other)], ttl_s=60)
    assert await log.credit(_click("o1", other, "a"), per_user=5, ttl_s=60) == "counted"


async def test_an_interleaved_answer_moves_its_preference_not_adds_one(log: AnswerLog) -> None:
    answer = _answer(teams=(Team.TEST, Team.BASELINE, Team.BASELINE))
    await log.remember([("t1", answer)], ttl_s=60)
    await log.credit(_click("t1", answer, "a"), per_user=100, ttl_s=60)
    counts = await log.counts("products")
    assert counts["il:v2:v1:test"] == 1 and counts["il:v2:v1:answers"] == 1
    await log.credit(_click("t1", answer, "b"), per_user=100, ttl_s=60)
    counts = await log.counts("products")
    assert (counts["il:v2:v1:test"], counts["il:v2:v1:tie"]) == (0, 1)
    await log.credit(_click("t1", answer, 7), per_user=100, ttl_s=60)
    counts = await log.counts("products")
    assert (counts["il:v2:v1:tie"], counts["il:v2:v1:baseline"]) == (0, 1)
    assert "v2:clicked" not in counts  # interleaved answers are not the version's own
    await log.reset("products")
    assert await log.counts("products") == {}
