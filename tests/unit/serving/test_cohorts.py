"""Per-second counts per version, reset on a new revision; shadow comparisons of two answers."""

from __future__ import annotations

import pytest

from proxy.serving.cohorts import CohortRecorder
from proxy.serving.shadow import overlap_at, rank_correlation


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_counts_sum_over_the_window_and_forget_older_seconds() -> None:
    clock = Clock()
    recorder = CohortRecorder(clock=clock)
    for second in range(5):
        clock.now = 1000.0 + second
        recorder.answered("a", 3, "v2", failed=second == 4, fallback=second == 4)
        recorder.searched("a", 3, "v2", 300.0 if second == 4 else 1.0, slow_ms=250)
    revision, windows = recorder.window("a", 2) or (0, {})
    assert revision == 3
    assert (windows["v2"].requests, windows["v2"].errors, windows["v2"].slow) == (2, 1, 1)
    assert (recorder.window("a", 60) or (0, {}))[1]["v2"].requests == 5


def test_a_new_revision_starts_counting_again_and_late_answers_are_dropped() -> None:
    recorder = CohortRecorder(clock=Clock())
    recorder.answered("a", 3, "v2")
    recorder.answered("a", 4, "v2")
    recorder.answered("a", 3, "v2")  # decided under revision 3, answered after 4 began
    revision, windows = recorder.window("a", 60) or (0, {})
    assert revision == 4 and windows["v2"].requests == 1
    assert recorder.window("other", 60) is None


@pytest.mark.parametrize(("a", "b", "k", "expected"), [
    ([1, 2, 3], [3, 2, 1], 3, 1.0), ([1, 2, 3, 4], [1, 5, 6, 7], 4, 0.25),
    ([], [], 10, 1.0), ([1, 2], [3], 10, 0.0)])
def test_overlap_at_k(a: list[int], b: list[int], k: int, expected: float) -> None:
    assert overlap_at(a, b, k) == expected


def test_rank_correlation_of_shared_ids() -> None:
    assert rank_correlation([1, 2, 3], [1, 2, 3]) == 1.0
    assert rank_correlation([1, 2, 3], [3, 2, 1]) == -1.0
    assert rank_correlation([1, 2], [2, 9]) is None
