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

import math
import random
from collections.abc import Hashable, Iterable, Mapping, Sequence
from enum import IntEnum, StrEnum
from typing import NamedTuple, TypeVar

import msgspec

from rollout_rules.bucket import NORMALISER, bucket
from rollout_rules.coverage import cap_bp
from rollout_rules.decide import Context, stickiness_value
from rollout_rules.guard import TAU, Window, msprt_rejects, proportions_differ, quantile_ms
from rollout_rules.model import GuardPolicy, Rollout, State
from rollout_rules.promotion import QualityRecord

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
REMEMBERED = 100
"""An answer's hits remembered for feedback, from the top: a deep page (a reranker's 1,000
candidates) keeps its first hundred, where people click."""
RR_SCALE = 1_000_000  # reciprocal ranks are summed as integers of this many parts
NO_TEAM = -1


class Answer(msgspec.Struct, frozen=True, array_like=True, gc=False):
    """What the proxy remembers of one answer for ``feedback_ttl``: enough to join feedback to
    it and nothing else (no query text, no payload). ``docs`` are the hits' own ids (an
    integer and its text differ), in the order shown; ``teams`` the team of each for an
    interleaved answer (then ``version`` is the version under test and ``baseline`` the
    other), else empty. Tuples of atoms, and no garbage-collector tracking: a proxy holds
    hundreds until each flush, and they must not make the collector's passes longer."""

    alias: str
    version: str
    revision: int
    user: str  # the sticky key the answer was routed by
    tenant: str | None
    at_ms: int  # when it was answered (ms since the epoch)
    docs: tuple[int | str, ...]
    teams: tuple[int, ...] = ()
    baseline: str = ""

    @property
    def interleaved(self) -> bool:
        return bool(self.teams)


class Placed(NamedTuple):
    """Where an event's document stood in its answer."""

    position: int
    team: int  # NO_TEAM for an answer that was not interleaved


def place(answer: Answer, doc_id: int | str, at_ms: int | None) -> Placed | str:
    """The event's document in its answer, or why the event cannot count: it happened before
    the answer, or names a document the answer did not hold (by name)."""
    if at_ms is not None and at_ms < answer.at_ms:
        return "its time is before the answer it is about"
    for position, shown in enumerate(answer.docs):
        if shown == doc_id and type(shown) is type(doc_id):  # 7 and "7" are two documents
            return Placed(position, answer.teams[position] if answer.teams else NO_TEAM)
    return f"doc_id {msgspec.json.encode(doc_id).decode()} was not in the answer"


def preference_of(clicks_test: int, clicks_baseline: int) -> Preference | None:
    """An interleaved answer's preference from its credited clicks; None before any click (an
    answer nobody clicked carries no evidence, not even a tie)."""
    if clicks_test + clicks_baseline == 0:
        return None
    if clicks_test == clicks_baseline:
        return Preference.TIE
    return Preference.TEST if clicks_test > clicks_baseline else Preference.BASELINE


# -- who is interleaved ------------------------------------------------------------------------


def interleaves(rollout: Rollout, context: Context, coverage: float | None, seed: str) -> bool:
    """Whether this query gets an interleaved answer: the alias runs an interleaving
    experiment, its candidate is ramping (not paused or rolled back), the user is not pinned,
    the coverage gate would let this user on the candidate whatever the percent (so no user
    sees a candidate that cannot yet answer them), and the query falls in the share (a coin
    seeded by ``seed``, the trace id)."""
    experiment = rollout.experiment
    if experiment is None or experiment.share <= 0 or rollout.candidate is None:
        return False
    if rollout.state is not State.RAMPING:
        return False
    overrides = rollout.overrides
    if context.user_id in overrides.users or context.tenant in overrides.tenants:
        return False
    key = stickiness_value(rollout.stickiness, context)
    if key is None or bucket(rollout.group, key) > cap_bp(rollout.coverage_gate, coverage):
        return False
    return bucket(f"{rollout.group}:interleave", seed) <= round(experiment.share * NORMALISER)


# -- what the counts say -----------------------------------------------------------------------


class Figures(msgspec.Struct, frozen=True, kw_only=True):
    """One version's online figures from its own answers (``proxy.state.answers`` counts)."""

    answers: int
    click_through: float | None  # answers with a click in the top 10
    mrr: float | None  # mean reciprocal rank of the first click (0 for none)
    conversions: float | None  # per answer
    thumbs_up: float | None  # share of thumbs that were up
    requery: float | None  # answers followed by another search of the same user, other text
    zero_hits: float | None
    low_top: float | None  # answers whose best score is under the version's own floor


def figures(counts: Mapping[str, float], prefix: str) -> Figures:
    """``prefix``: a version's name, or ``il:{test}:{baseline}`` for an interleaved pair."""
    def get(field: str) -> float:
        return counts.get(f"{prefix}:{field}", 0.0)

    answers = int(get("answers"))
    up, down = get("thumbs_up"), get("thumbs_down")

    def per(value: float) -> float | None:
        return value / answers if answers else None

    return Figures(answers=answers, click_through=per(get("clicked")),
                   mrr=per(get("rr") / RR_SCALE), conversions=per(get("convert")),
                   thumbs_up=up / (up + down) if up + down else None,
                   requery=per(get("requery")), zero_hits=per(get("zero_hits")),
                   low_top=get("low_top") / get("scored") if get("scored") else None)


class Interleaving(NamedTuple):
    wins: int
    losses: int
    ties: int
    answers: int  # interleaved answers shown (clicked or not)

    @property
    def share(self) -> float | None:
        return win_share(self.wins, self.losses, self.ties)


def interleaving(counts: Mapping[str, float], test: str, baseline: str) -> Interleaving:
    base = f"il:{test}:{baseline}"
    return Interleaving(int(counts.get(f"{base}:{Preference.TEST}", 0)),
                        int(counts.get(f"{base}:{Preference.BASELINE}", 0)),
                        int(counts.get(f"{base}:{Preference.TIE}", 0)),
                        int(counts.get(f"{base}:answers", 0)))


def online_breach(counts: Mapping[str, float], test: str, baseline: str,
                  policy: GuardPolicy) -> str | None:
    """Why the version under test serves users worse, beyond doubt, or None: a significant
    loss in interleaving; its own answers' click-through more than ``max_click_drop`` (a
    share) below the baseline's and significantly so; its re-query rate more than
    ``max_requery_rise`` above and significantly so. Under ``min_requests`` of the evidence
    in question there is no finding."""
    pair = interleaving(counts, test, baseline)
    found = preference(pair.wins, pair.losses, alpha=policy.alpha,
                       min_answers=policy.min_requests)
    if found is Finding.WORSE:
        return (f"interleaving: {baseline} preferred in {pair.losses} answers, {test} in "
                f"{pair.wins} ({pair.ties} ties)")
    mine, theirs = figures(counts, test), figures(counts, baseline)
    n, m = mine.answers, theirs.answers
    if min(n, m) < policy.min_requests:
        return None
    clicked_n, clicked_m = counts.get(f"{test}:clicked", 0), counts.get(f"{baseline}:clicked", 0)
    if clicked_n + clicked_m >= policy.min_requests and mine.click_through is not None \
            and theirs.click_through is not None \
            and mine.click_through < theirs.click_through * (1 - policy.max_click_drop) \
            and proportions_differ(int(clicked_m), m, int(clicked_n), n, tau=TAU,
                                   alpha=policy.alpha):
        return (f"click-through {mine.click_through:.1%} of {n} answers against "
                f"{baseline}'s {theirs.click_through:.1%} of {m}")
    again_n, again_m = counts.get(f"{test}:requery", 0), counts.get(f"{baseline}:requery", 0)
    if mine.requery is not None and theirs.requery is not None \
            and mine.requery > theirs.requery * (1 + policy.max_requery_rise) \
            and proportions_differ(int(again_n), n, int(again_m), m, tau=TAU,
                                   alpha=policy.alpha):
        return (f"re-queries after {mine.requery:.1%} of {n} answers against "
                f"{baseline}'s {theirs.requery:.1%} of {m}")
    return None


def online_blocks(rollout: Rollout, counts: Mapping[str, float]) -> str | None:
    """What online evidence ``promotion.require_online`` still waits for (None: none): ``win``
    a significant interleaving win; ``no-loss`` at least ``guard.min_requests`` decisive
    interleaved answers without a significant loss."""
    need = rollout.promotion.require_online
    if need == "off" or rollout.candidate is None:
        return None
    pair = interleaving(counts, rollout.candidate, rollout.stable)
    decisive = pair.wins + pair.losses
    found = preference(pair.wins, pair.losses, alpha=rollout.guard.alpha,
                       min_answers=rollout.guard.min_requests)
    said = (f"{pair.wins} interleaved answers prefer {rollout.candidate}, {pair.losses} "
            f"{rollout.stable}")
    if found is Finding.WORSE:
        return f"online evidence says {rollout.candidate} is worse ({said})"
    if need == "win" and found is not Finding.BETTER:
        return f"online evidence does not show a win yet ({said}; a significant win needed)"
    if decisive < rollout.guard.min_requests:
        return (f"too little online evidence ({said}; at least "
                f"{rollout.guard.min_requests} decisive answers needed)")
    return None


def online_table(counts: Mapping[str, float], versions: Sequence[str],
                 pairs: Sequence[tuple[str, str]] = ()) -> dict[str, dict[str, float | None]]:
    """Each version's figures, and each interleaved pair's as ``TEST~BASELINE``: what
    ``status``, ``/metrics`` and the status page show."""
    table: dict[str, dict[str, float | None]] = {
        version: msgspec.structs.asdict(figures(counts, version)) for version in versions}
    for test, baseline in pairs:
        pair = interleaving(counts, test, baseline)
        table[f"{test}~{baseline}"] = {"answers": pair.answers, "wins": pair.wins,
                                       "losses": pair.losses, "ties": pair.ties,
                                       "win_share": pair.share}
    return table


def online_figures(counts: Mapping[str, float], test: str, baseline: str
                   ) -> dict[str, float | None]:
    """The figures a verdict carries: both cohorts' click-through and re-query rate, and the
    interleaved pair's wins, losses and ties."""
    mine, theirs = figures(counts, test), figures(counts, baseline)
    pair = interleaving(counts, test, baseline)
    return {"test_click_through": mine.click_through,
            "baseline_click_through": theirs.click_through,
            "test_requery": mine.requery, "baseline_requery": theirs.requery,
            "interleave_wins": pair.wins, "interleave_losses": pair.losses,
            "interleave_ties": pair.ties}


def online_of(rollout: Rollout, counts: Mapping[str, float]) -> dict[str, dict[str, float | None]]:
    """The alias's online table: every declared version with answers counted, and the
    candidate interleaved with stable when it was."""
    versions = [v.name for v in rollout.versions if counts.get(f"{v.name}:answers")]
    pairs = [(rollout.candidate, rollout.stable)] if rollout.candidate is not None and counts.get(
        f"il:{rollout.candidate}:{rollout.stable}:answers") else []
    return online_table(counts, versions, pairs)


# -- the per-version table ---------------------------------------------------------------------

Z95 = 1.959964


class Row(msgspec.Struct, frozen=True, kw_only=True):
    """One version's line: offline (golden set), online (users), operational (this window)."""

    version: str
    role: str  # stable, candidate, previous stable
    ndcg_at_10: float | None = None
    precision_at_5: float | None = None
    answers: int = 0
    click_through: float | None = None
    mrr: float | None = None
    thumbs_up: float | None = None
    requery: float | None = None
    zero_hits: float | None = None
    low_top: float | None = None
    p50_ms: float | None = None  # store search time, over the guard's window
    cache_hit: float | None = None  # answers that needed no store search


class Delta(msgspec.Struct, frozen=True, kw_only=True):
    """Candidate minus stable, with its 95% interval (normal approximation)."""

    figure: str
    value: float
    low: float
    high: float


class QualityTable(msgspec.Struct, frozen=True, kw_only=True):
    alias: str
    rows: list[Row]
    deltas: list[Delta]
    interleaving: dict[str, float | None] | None = None  # wins, losses, ties, win_share, ...
    finding: str | None = None  # better, worse, undecided (interleaving, at the guard's alpha)
    missing: str | None = None  # what promotion.require_online still waits for


def quality_table(rollout: Rollout, counts: Mapping[str, float],
                  golden: QualityRecord | None, windows: Mapping[str, Window]) -> QualityTable:
    """The seeds' dashboard: per version the golden-set figures (when a judgement against
    this stable exists), the online ones, p50 search latency and cache hit rate; the
    candidate's deltas with their intervals; the interleaving score and finding."""
    roles = {rollout.stable: "stable"}
    if rollout.candidate is not None:
        roles[rollout.candidate] = "candidate"
    if rollout.previous_stable is not None:
        roles.setdefault(rollout.previous_stable, "previous stable")
    if golden is not None and golden.stable != rollout.stable:
        golden = None
    rows = [_row(name, role, counts, golden=golden, window=windows.get(name), rollout=rollout)
            for name, role in roles.items()]
    deltas: list[Delta] = []
    pair_found: dict[str, float | None] | None = None
    finding = None
    if rollout.candidate is not None:
        deltas = _deltas(counts, rollout.candidate, rollout.stable)
        pair = interleaving(counts, rollout.candidate, rollout.stable)
        if pair.answers:
            decisive = pair.wins + pair.losses
            share = pair.wins / decisive if decisive else None
            spread = Z95 * math.sqrt(0.25 / decisive) if decisive else None
            pair_found = {"answers": pair.answers, "wins": pair.wins, "losses": pair.losses,
                          "ties": pair.ties, "win_share": share,
                          "low": None if share is None or spread is None
                          else max(0.0, share - spread),
                          "high": None if share is None or spread is None
                          else min(1.0, share + spread)}
            finding = str(preference(pair.wins, pair.losses, alpha=rollout.guard.alpha,
                                     min_answers=rollout.guard.min_requests))
    return QualityTable(alias=rollout.alias, rows=rows, deltas=deltas,
                        interleaving=pair_found, finding=finding,
                        missing=online_blocks(rollout, counts))


def _row(name: str, role: str, counts: Mapping[str, float], *, golden: QualityRecord | None,
         window: Window | None, rollout: Rollout) -> Row:
    found = figures(counts, name)
    ndcg = precision = None
    if golden is not None and name == golden.stable:
        ndcg, precision = golden.stable_ndcg_at_10, golden.stable_precision_at_5
    elif golden is not None and name == rollout.candidate:
        ndcg, precision = golden.candidate_ndcg_at_10, golden.candidate_precision_at_5
    p50 = quantile_ms(window.latency, 0.5) if window is not None else None
    cached = (1 - window.searches / window.requests) if window and window.requests else None
    return Row(version=name, role=role, ndcg_at_10=ndcg, precision_at_5=precision,
               answers=found.answers, click_through=found.click_through, mrr=found.mrr,
               thumbs_up=found.thumbs_up, requery=found.requery, zero_hits=found.zero_hits,
               low_top=found.low_top,
               p50_ms=p50 if p50 is None or math.isfinite(p50) else None,
               cache_hit=None if cached is None else max(0.0, cached))


def _deltas(counts: Mapping[str, float], test: str, baseline: str) -> list[Delta]:
    """Click-through and re-query rate, candidate minus stable, where both have answers."""
    deltas = []
    for name, field in (("click_through", "clicked"), ("requery", "requery")):
        n, m = counts.get(f"{test}:answers", 0), counts.get(f"{baseline}:answers", 0)
        if not n or not m:
            continue
        p, q = counts.get(f"{test}:{field}", 0) / n, counts.get(f"{baseline}:{field}", 0) / m
        spread = Z95 * math.sqrt(p * (1 - p) / n + q * (1 - q) / m)
        deltas.append(Delta(figure=name, value=p - q, low=max(-1.0, p - q - spread),
                            high=min(1.0, p - q + spread)))
    return deltas
