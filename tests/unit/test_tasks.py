"""A background task that loses a cancellation is still stopped, and its failure consumed."""

from __future__ import annotations

import asyncio

import pytest

from proxy.tasks import cancel_and_wait


async def test_a_task_that_swallows_a_cancellation_is_cancelled_again_until_it_ends() -> None:
    swallowed = 0

    async def stubborn() -> None:  # as a loop does when a library loses the cancel for it
        nonlocal swallowed
        while True:
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                if swallowed < 3:
                    swallowed += 1
                    continue
                raise

    task = asyncio.create_task(stubborn())
    await asyncio.sleep(0)
    await asyncio.wait_for(cancel_and_wait([task]), 5)
    assert task.cancelled() and swallowed == 3


async def test_a_task_that_had_failed_is_consumed_not_raised() -> None:
    async def fails() -> None:
        raise RuntimeError("before the stop")

    task = asyncio.create_task(fails())
    await asyncio.sleep(0)
    await cancel_and_wait([task])
    with pytest.raises(RuntimeError):
        task.result()
