"""Answers wait in memory for one flush; a user's other words soon after count as a re-query."""

from __future__ import annotations

import pytest

from proxy.online import recorder
from proxy.online.recorder import AnswerRecorder
from proxy.state.answers import MemoryAnswerLog
from rollout_rules.online import Answer


def _answer(user: str, at_ms: int, version: str = "v2", docs: int = 3) -> Answer:
    return Answer(alias="products", version=version, revision=1, user=user, tenant=None,
                  at_ms=at_ms, docs=tuple(str(n) for n in range(docs)))


async def test_other_words_within_the_window_are_a_re_query_of_the_first_answer() -> None:
    log = MemoryAnswerLog()
    seen = AnswerRecorder(log, ttl_s=60, requery_s=60)
    seen.answered("t1", _answer("ann", 0, "v2"), "warm jacket")
    seen.answered("t2", _answer("ann", 1_000, "v1"), "Warm Jacket")  # the same words: none
    seen.answered("t3", _answer("ann", 2_000, "v1"), "insulated parka")  # v1's answer failed
    seen.answered("t4", _answer("bob", 0), "tent")
    seen.answered("t5", _answer("bob", 61_000), "two person tent")  # too late: none
    seen.answered("t6", _answer("cy", 0, docs=0), "nothing matches this")
    assert seen.recent("t1") is not None  # feedback here is joined before the flush
    await seen.flush()
    assert seen.recent("t1") is None and await log.recall(["t1"]) != [None]
    counts = await log.counts("products")
    assert counts["v1:requery"] == 1 and "v2:requery" not in counts
    assert counts["v2:zero_hits"] == 1
    assert counts["v1:answers"] == 2 and counts["v2:answers"] == 4


async def test_answers_past_the_bound_are_dropped_and_counted(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(recorder, "MAX_PENDING", 3)
    seen = AnswerRecorder(MemoryAnswerLog(), ttl_s=60)
    for n in range(5):
        seen.answered(f"t{n}", _answer(f"u{n}", n), "")
    assert len(seen.pending) == 3 and seen.dropped == 2


async def test_a_low_top_score_is_low_against_the_versions_own_first_answers(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(recorder, "FLOOR_SAMPLE", 10)
    log = MemoryAnswerLog()
    seen = AnswerRecorder(log, ttl_s=60)
    for n in range(10):  # v1 scores 0.50-0.59, v2 0.20-0.29: each its own floor
        seen.answered(f"a{n}", _answer(f"u{n}", n, "v1"), "", 0.5 + n / 100)
        seen.answered(f"b{n}", _answer(f"u{n}", n, "v2"), "", 0.2 + n / 100)
    seen.answered("a10", _answer("x", 20, "v1"), "", 0.3)  # low for v1
    seen.answered("b10", _answer("x", 20, "v2"), "", 0.3)  # a fine score for v2
    seen.answered("a11", _answer("y", 20, "v1"), "", None)  # an interleaved answer: no score
    await seen.flush()
    counts = await log.counts("products")
    assert (counts["v1:scored"], counts["v1:low_top"]) == (1, 1)
    assert counts["v2:scored"] == 1 and "v2:low_top" not in counts
