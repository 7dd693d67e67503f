"""Team draft keeps each ranking's order and fair turns; credit and test decide on evidence."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from rollout_rules.online import (
    Finding,
    Preference,
    Team,
    credit,
    preference,
    team_draft,
    win_share,
)

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
