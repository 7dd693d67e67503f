"""Online quality, pure: team-draft interleaving, its credit, and the sequential test on it.

Interleaving (team draft: Radlinski, Kurup and Joachims, CIKM 2008) answers one query with one
list drawn from two rankings. Like picking sports teams, the team with fewer picks so far (a
coin breaks ties) adds its highest result not yet shown, and each result remembers the team that
placed it. A click is credited to that team; the team with more clicks wins the answer, equal
clicks are a tie. Each answer is then a paired comparison of the two versions on the same query
and the same user, so the spread between users, which dominates an A/B test of click-through,
drops out (Chapelle, Joachims, Radlinski and Yue, TOIS 2012).

The coin is seeded by the answer's trace id, so the list an answer showed can be rebuilt.

Wins of the version under test, ties dropped, are Bernoulli(p) with p = 1/2 when neither version
is better. ``preference`` asks the guard's always-valid test (the normal mSPRT, looked at as
often as one likes) whether p is above or below 1/2; under ``min_answers`` decisive answers
there is no verdict, as thin evidence must never move a rollout.

No I/O: lists in, lists out.
"""

from __future__ import annotations

import random
from collections.abc import Hashable, Iterable, Sequence
from enum import IntEnum, StrEnum
from typing import NamedTuple, TypeVar

import msgspec

from rollout_rules.guard import TAU, msprt_rejects

T = TypeVar("T", bound=Hashable)


class Team(IntEnum):
    """Who placed a result: the baseline (stable) or the version under test (the candidate)."""

    BASELINE = 0
    TEST = 1


class Preference(StrEnum):
    """What one interleaved answer's clicks say."""

    TEST = "test"  # the version under test placed more of the clicked results
    BASELINE = "baseline"
    TIE = "tie"  # as many clicks on each side, or none


class Finding(StrEnum):
    """What the evidence says so far."""

    BETTER = "better"  # the version under test is preferred, beyond doubt
    WORSE = "worse"
    UNDECIDED = "undecided"  # not enough evidence either way (or none to be had)


def team_draft(baseline: Sequence[T], test: Sequence[T], limit: int, seed: str
               ) -> list[tuple[T, Team]]:
    """One list of at most ``limit`` results from two rankings, each with the team that placed
    it. A result both rankings hold is shown once, for the team that picked it first; a team
    whose ranking is spent leaves the rest of the picks to the other. The coin is seeded by
    ``seed`` (the answer's trace id): the same inputs give the same list."""
    coin = random.Random(seed)
    shown: set[T] = set()
    picked = [0, 0]
    cursor = [0, 0]
    rankings = (baseline, test)
    merged: list[tuple[T, Team]] = []
    while len(merged) < limit:
        left = [_skip(rankings[t], cursor[t], shown) for t in (0, 1)]
        cursor = left
        open_teams = [t for t in (0, 1) if left[t] < len(rankings[t])]
        if not open_teams:
            break
        if len(open_teams) == 1:
            team = open_teams[0]
        elif picked[0] != picked[1]:
            team = 0 if picked[0] < picked[1] else 1
        else:
            team = coin.randrange(2)
        item = rankings[team][cursor[team]]
        shown.add(item)
        picked[team] += 1
        merged.append((item, Team(team)))
    return merged


def _skip(ranking: Sequence[T], at: int, shown: set[T]) -> int:
    while at < len(ranking) and ranking[at] in shown:
        at += 1
    return at


def credit(teams: Sequence[Team], clicked: Iterable[int]) -> Preference:
    """The answer's preference from the positions (0-based) of its clicked results: the team
    that placed more of them; positions outside the list are not the answer's and count for
    nobody (the caller refuses them first)."""
    clicks = [0, 0]
    for position in set(clicked):
        if 0 <= position < len(teams):
            clicks[teams[position]] += 1
    if clicks[Team.TEST] > clicks[Team.BASELINE]:
        return Preference.TEST
    if clicks[Team.TEST] < clicks[Team.BASELINE]:
        return Preference.BASELINE
    return Preference.TIE


def win_share(wins: int, losses: int, ties: int) -> float | None:
    """Chapelle et al.'s share: (wins + ties/2) / answers; 1/2 when the versions are equal."""
    answers = wins + losses + ties
    return (wins + ties / 2) / answers if answers else None


def preference(wins: int, losses: int, *, alpha: float, min_answers: int) -> Finding:
    """Better, worse or undecided from the decisive answers (wins and losses of the version
    under test; ties carry no preference). Each direction is its own one-sided always-valid
    test at ``alpha``, so under equal versions a false "worse" is at most ``alpha`` however
    often this is asked."""
    decisive = wins + losses
    if decisive < min_answers:
        return Finding.UNDECIDED
    share = wins / decisive
    variance = 0.25 / decisive  # the Bernoulli's, exact under "no preference"
    if msprt_rejects(0.5 - share, variance, tau=TAU, alpha=alpha):
        return Finding.WORSE
    if msprt_rejects(share - 0.5, variance, tau=TAU, alpha=alpha):
        return Finding.BETTER
    return Finding.UNDECIDED


# -- feedback, joined to the answer it is about ------------------------------------------------

BUILT_IN_EVENTS = ("click", "convert", "thumbs_up", "thumbs_down")
NO_TEAM = -1


class Answer(msgspec.Struct, frozen=True, array_like=True):
    """What the proxy remembers of one answer for ``feedback_ttl``: enough to join feedback to
    it and nothing else (no query text, no payload). ``docs`` are the hits' ids as ``id_key``
    text, in the order shown; ``teams`` the team of each for an interleaved answer (then
    ``version`` is the version under test and ``baseline`` the other), else empty."""

    alias: str
    version: str
    revision: int
    user: str  # the sticky key the answer was routed by
    tenant: str | None
    at_ms: int  # when it was answered (ms since the epoch)
    docs: list[str]
    teams: list[int] = msgspec.field(default_factory=list)
    baseline: str = ""

    @property
    def interleaved(self) -> bool:
        return bool(self.teams)


class Placed(NamedTuple):
    """Where an event's document stood in its answer."""

    position: int
    team: int  # NO_TEAM for an answer that was not interleaved


def place(answer: Answer, doc_key: str, at_ms: int | None) -> Placed | str:
    """The event's document in its answer, or why the event cannot count: it happened before
    the answer, or names a document the answer did not hold (by name)."""
    if at_ms is not None and at_ms < answer.at_ms:
        return "its time is before the answer it is about"
    try:
        position = answer.docs.index(doc_key)
    except ValueError:
        return f"doc_id {doc_key} was not in the answer"
    return Placed(position, answer.teams[position] if answer.teams else NO_TEAM)


def preference_of(clicks_test: int, clicks_baseline: int) -> Preference | None:
    """An interleaved answer's preference from its credited clicks; None before any click (an
    answer nobody clicked carries no evidence, not even a tie)."""
    if clicks_test + clicks_baseline == 0:
        return None
    if clicks_test == clicks_baseline:
        return Preference.TIE
    return Preference.TEST if clicks_test > clicks_baseline else Preference.BASELINE
