"""Stopping background tasks for certain: the one way every loop of the proxy is stopped.

On Python 3.11 ``asyncio.wait_for`` swallows a cancellation that arrives just as the call it
waits on completes (CPython gh-86296, fixed in 3.12), and redis-py wraps every command it sends
in one. A single ``cancel()`` is then lost, and a loop that carries on past store errors runs
for ever while whoever stops it waits for ever. So a task is cancelled again and again until it
has finished.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any


async def cancel_and_wait(tasks: Iterable[asyncio.Task[Any]]) -> None:
    """Cancel each task, again every 50 ms, until it has finished; its outcome is consumed
    (a task that failed before it was cancelled is not reported as never retrieved)."""
    for task in list(tasks):
        while not task.done():
            task.cancel()
            await asyncio.wait({task}, timeout=0.05)
        if not task.cancelled():
            task.exception()
