"""Team draft keeps each ranking's order and fair turns; credit and test decide on evidence."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rollout_rules.guard import Window
from rollout_rules.online import (
    RR_SCALE,
    Finding,
    Preference,
    Team,
    credit,
    online_blocks,
    online_breach,
    preference,
    quality_table,
    team_draft,
    win_share,
)
from rollout_rules.promotion import QualityRecord
from tests.unit.core.rollouts import rollout

rankings = st.lists(st.integers(min_value=0, max_value=30), max_size=15, unique=True)


@given(rankings, rankings, st.integers(min_value=0, max_value=20), st.text(max_size=32))
def test_a_team_draft_shows_each_result_once_in_each_teams_own_order(
        baseline: list[int], test: list[int], limit: int, seed: str) -> None:
    merged = team_draft(baseline, test, limit, seed)
    items = [item for item, _ in merged]
    assert len(items) == len(set(items))
    assert len(items) == min(limit, len(set(baseline) | set(test)))
    for team, ranking in ((Team.BASELINE, baseline), (Team.TEST, test)):
        placed = [ranking.index(item) for item, by in merged if by is team]
        assert placed == sorted(placed)  # a team adds its highest result not yet shown
    # while both teams have results left, neither is ever two picks ahead
    counts = [0, 0]
    for _item, team in merged:
        counts[team] += 1
        other = 1 - team
        spent = {i for i, _ in merged[:sum(counts)]}
        if [r for r in (baseline, test)[other] if r not in spent]:
            assert counts[team] - counts[other] <= 1


def test_the_coin_is_the_trace_id_so_an_answer_can_be_rebuilt() -> None:
    a, b = list(range(10)), list(range(10, 20))
    lists = {tuple(team_draft(a, b, 10, f"trace-{n}")) for n in range(50)}
    assert len(lists) > 1  # the coin moves with the seed ...
    assert team_draft(a, b, 10, "trace-7") == team_draft(a, b, 10, "trace-7")  # ... only


def test_identical_rankings_give_a_list_equal_to_either() -> None:
    ranking = ["d3", "d1", "d9", "d4"]
    merged = team_draft(ranking, ranking, 4, "seed")
    assert [item for item, _ in merged] == ranking


def test_clicks_go_to_the_team_that_placed_the_result() -> None:
    teams = [Team.TEST, Team.BASELINE, Team.BASELINE, Team.TEST]
    assert credit(teams, [0]) is Preference.TEST
    assert credit(teams, [0, 1, 2]) is Preference.BASELINE
    assert credit(teams, [0, 1]) is Preference.TIE
    assert credit(teams, []) is Preference.TIE
    assert credit(teams, [0, 0, 0, 1, 2]) is Preference.BASELINE  # one credit per result
    assert credit(teams, [9, -1]) is Preference.TIE  # not the answer's positions


def test_the_test_decides_only_on_enough_decisive_answers() -> None:
    assert preference(40, 0, alpha=0.05, min_answers=50) is Finding.UNDECIDED
    assert preference(300, 200, alpha=0.05, min_answers=50) is Finding.BETTER
    assert preference(200, 300, alpha=0.05, min_answers=50) is Finding.WORSE
    assert preference(252, 248, alpha=0.05, min_answers=50) is Finding.UNDECIDED
    assert win_share(3, 1, 2) == 4 / 6 and win_share(0, 0, 0) is None


COUNTS = {"v1:answers": 1000, "v1:clicked": 400, "v1:rr": 300 * RR_SCALE, "v1:requery": 50,
          "v2:answers": 1000, "v2:clicked": 250, "v2:rr": 150 * RR_SCALE, "v2:requery": 52,
          "il:v2:v1:answers": 600, "il:v2:v1:test": 60, "il:v2:v1:baseline": 140,
          "il:v2:v1:tie": 20}


def test_a_significant_loss_is_a_breach_and_thin_evidence_never_is() -> None:
    policy = rollout().guard
    found = online_breach(COUNTS, "v2", "v1", policy)
    assert found is not None and found.startswith("interleaving: v1 preferred in 140")
    without_interleaving = {k: v for k, v in COUNTS.items() if not k.startswith("il:")}
    assert online_breach(without_interleaving, "v2", "v1", policy) == (
        "click-through 25.0% of 1000 answers against v1's 40.0% of 1000")
    thin = {k: v / 100 for k, v in COUNTS.items()}  # the same shares over 10 answers
    assert online_breach(thin, "v2", "v1", policy) is None
    requery = {"v1:answers": 500, "v1:requery": 20, "v2:answers": 500, "v2:requery": 90}
    assert online_breach(requery, "v2", "v1", policy) == (
        "re-queries after 18.0% of 500 answers against v1's 4.0% of 500")


def test_require_online_holds_the_promote_until_the_evidence_is_there() -> None:
    win = rollout(promotion={"require_online": "win"})
    no_loss = rollout(promotion={"require_online": "no-loss"})
    assert online_blocks(rollout(), {}) is None  # off by default
    assert "too little online evidence" in str(online_blocks(no_loss, {}))
    assert "worse" in str(online_blocks(no_loss, COUNTS))
    better = {"il:v2:v1:test": 140, "il:v2:v1:baseline": 60}
    assert online_blocks(win, better) is None and online_blocks(no_loss, better) is None
    even = {"il:v2:v1:test": 100, "il:v2:v1:baseline": 100}
    assert "does not show a win" in str(online_blocks(win, even))
    assert online_blocks(no_loss, even) is None


def test_the_table_has_each_versions_figures_and_the_deltas_with_intervals() -> None:
    golden = QualityRecord(stable="v1", stable_ndcg_at_10=0.513, candidate_ndcg_at_10=0.645,
                           stable_precision_at_5=0.2, candidate_precision_at_5=0.25)
    window = Window(requests=100, searches=40, latency=(0, 0, 30, 10))
    table = quality_table(rollout(), COUNTS, golden, {"v1": window})
    v1, v2 = table.rows
    assert (v1.role, v1.ndcg_at_10, v1.precision_at_5, v1.click_through, v1.mrr) == (
        "stable", 0.513, 0.2, 0.4, 0.3)
    assert (v1.p50_ms, v1.cache_hit) == (2, 0.6)
    assert (v2.ndcg_at_10, v2.click_through, v2.p50_ms) == (0.645, 0.25, None)
    clicks = table.deltas[0]
    assert clicks.figure == "click_through" and clicks.value == pytest.approx(-0.15)
    assert clicks.low < clicks.value < clicks.high
    assert table.interleaving is not None and table.interleaving["win_share"] == 0.3
    assert table.finding == "worse"
    other = QualityRecord(stable="v0", stable_ndcg_at_10=0.9, candidate_ndcg_at_10=0.1)
    assert quality_table(rollout(), {}, other, {}).rows[0].ndcg_at_10 is None  # not this pair
