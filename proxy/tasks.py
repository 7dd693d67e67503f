"""Stopping background tasks for certain: the one way every loop of the proxy is stopped.

On Python 3.11 ``asyncio.wait_for`` swallows a cancellation that arrives just as the call it
waits on completes (CPython gh-86296, fixed in 3.12), and redis-py wraps every command it sends
in one. A single ``cancel()`` is then lost, and a loop that carries on past store errors runs
for ever while whoever stops it waits for ever. So a task is cancelled again and again until it
has finished.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from rollout_rules.errors import StoreUnavailable


async def cancel_and_wait(tasks: Iterable[asyncio.Task[Any]]) -> None:
    """Cancel each task, again every 50 ms, until it has finished; its outcome is consumed
    (a task that failed before it was cancelled is not reported as never retrieved)."""
    for task in list(tasks):
        while not task.done():
            task.cancel()
            await asyncio.wait({task}, timeout=0.05)
        if not task.cancelled():
            task.exception()


class Periodic:
    """``work`` every ``every_s`` in a task of its own, until stopped; then once more, so what
    it flushes is not lost on the way out (a store that cannot take it is not the stopper's
    error: ``StoreUnavailable`` is left to ``work`` to report, and swallowed here)."""

    def __init__(self, name: str, every_s: float, work: Callable[[], Awaitable[None]]) -> None:
        self.name, self.every_s, self.work = name, every_s, work
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=self.name)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.every_s)
            await self.work()

    async def stop(self) -> None:
        if self._task is not None:
            await cancel_and_wait([self._task])
            self._task = None
        with contextlib.suppress(StoreUnavailable):
            await self.work()
