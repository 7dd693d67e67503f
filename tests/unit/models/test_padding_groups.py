"""Padding groups hold every text once and keep each run's padding within its budget."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from proxy.models.encoders import PADDING_BUDGET, padding_groups


def test_similar_lengths_share_a_run_and_outliers_do_not() -> None:
    assert padding_groups([5, 20, 21, 22, 30, 8, 9, 23]) == [[0], [5, 6], [1, 2, 3, 7], [4]]
    assert padding_groups([]) == []


@given(st.lists(st.integers(min_value=1, max_value=256), max_size=64))
def test_every_text_once_and_padding_within_budget(lengths: list[int]) -> None:
    groups = padding_groups(lengths)
    assert sorted(i for g in groups for i in g) == list(range(len(lengths)))
    for group in groups:
        padded = len(group) * max(lengths[i] for i in group)
        assert padded <= sum(lengths[i] for i in group) * (1 + PADDING_BUDGET) + 1e-9
        assert [lengths[i] for i in group] == sorted(lengths[i] for i in group)
