"""Waiting for something another task or process will do, with a bound."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable


async def eventually(check: Callable[..., bool], timeout_s: float = 5.0) -> float:
    """Seconds until ``check()`` held; AssertionError if it did not within ``timeout_s``."""
    start = time.perf_counter()
    while not check():
        if time.perf_counter() - start > timeout_s:
            raise AssertionError(f"condition not met within {timeout_s:g}s")
        await asyncio.sleep(0.001)
    return time.perf_counter() - start
