"""The engine's threads hand back every call's result or error, and refuse calls once stopped."""

from __future__ import annotations

import asyncio
import threading

import pytest

from proxy.vectors.edge import Lane


async def test_results_and_errors_come_back_to_their_callers() -> None:
    lane = Lane(2, "test")
    try:
        assert await asyncio.gather(*(lane.run(pow, n, 2) for n in range(50))) == [
            n * n for n in range(50)]
        with pytest.raises(ZeroDivisionError):
            await lane.run(divmod, 1, 0)
        assert await lane.run(threading.current_thread) is not threading.current_thread()
    finally:
        lane.shutdown()


async def test_a_caller_that_gave_up_leaves_the_lane_working() -> None:
    lane = Lane(1, "test")
    started, release = threading.Event(), threading.Event()

    def slow() -> str:
        started.set()
        release.wait(5)
        return "late"

    waiting = asyncio.create_task(lane.run(slow))
    await asyncio.to_thread(started.wait, 5)
    waiting.cancel()  # a deadline passed: the result, when it comes, is dropped
    release.set()
    assert await lane.run(str, 7) == "7"
    assert waiting.cancelled()
    lane.shutdown()
    with pytest.raises(RuntimeError, match="stopped"):
        await lane.run(str, 8)
    lane.shutdown()  # twice is once
