"""Live traffic for safety tests: an open-loop stream of searches over several proxies."""

from __future__ import annotations

import asyncio
import itertools
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp

WORDS = ("warm", "light", "waterproof", "jacket", "tent", "boots", "stove", "kayak", "paddle",
         "winter", "trail", "running", "shoes", "sleeping", "bag", "lamp", "rope", "map",
         "compass", "gloves", "helmet", "bike", "lock", "bottle", "filter", "chair", "table")


@dataclass
class Answer:
    at: float  # perf_counter when the answer arrived
    status: int
    version: str | None
    reason: str | None


@dataclass
class Traffic:
    """``rate`` searches a second, each to the next URL in turn, from many users, with texts
    drawn from a few thousand word pairs (so the result cache rarely answers)."""

    urls: Sequence[str]
    rate: float
    alias: str = "products"
    answers: list[Answer] = field(default_factory=list)
    _task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        rng = random.Random(1)
        pending: set[asyncio.Task[None]] = set()
        async with aiohttp.ClientSession() as session:
            start = time.perf_counter()
            try:
                for n, url in enumerate(itertools.cycle(self.urls)):
                    await asyncio.sleep(max(0.0, start + n / self.rate - time.perf_counter()))
                    body = {"query": f"{rng.choice(WORDS)} {rng.choice(WORDS)} "
                                     f"{rng.choice(WORDS)}",
                            "user_id": f"user-{rng.randrange(100_000)}", "limit": 5}
                    task = asyncio.create_task(self._one(session, url, body))
                    pending.add(task)
                    task.add_done_callback(pending.discard)
            finally:
                for task in pending:
                    task.cancel()
                await asyncio.gather(*pending, return_exceptions=True)

    async def _one(self, session: aiohttp.ClientSession, url: str, body: dict[str, Any]
                   ) -> None:
        async with session.post(f"{url}/v1/aliases/{self.alias}/search", json=body) as answer:
            data = await answer.json() if answer.status == 200 else {}
        self.answers.append(Answer(time.perf_counter(), answer.status,
                                   data.get("model_version"),
                                   data.get("rollout", {}).get("reason")))
