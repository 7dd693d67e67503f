"""Waiting for something another task or process will do, with a bound."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable


async def eventually(check: Callable[..., bool], timeout_s: float = 5.0) -> float:
    """Seconds until ``check()`` held; AssertionError if it did not within ``timeout_s``."""
    start = time.perf_counter()
    while not check():
        if time.perf_counter() - start > timeout_s:
            raise AssertionError(f"condition not met within {timeout_s:g}s")
        await asyncio.sleep(0.001)
    return time.perf_counter() - start


async def eventually_async(check: Callable[[], Awaitable[bool]], timeout_s: float = 5.0,
                           every_s: float = 0.05) -> float:
    """``eventually`` for a check that must await (an HTTP call), asked every ``every_s``."""
    start = time.perf_counter()
    while not await check():
        if time.perf_counter() - start > timeout_s:
            raise AssertionError(f"condition not met within {timeout_s:g}s")
        await asyncio.sleep(every_s)
    return time.perf_counter() - start
