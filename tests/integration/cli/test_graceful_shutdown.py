"""`embedshift serve` drains on SIGTERM: readyz turns 503, no request in flight is lost."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest

from loadtest.ports import free_port
from proxy.state.redis_server import EmbeddedRedis
from tests.integration.cli.conftest import DRAIN_S, SHUTDOWN_S, Serving, StartServing
from tests.integration.cli.conftest import wait_ready as _wait_ready

pytestmark = pytest.mark.integration


@dataclass
class Load:
    """Clients of one port (the native API, or Qdrant's) behind a load balancer that stops
    sending once that port's readyz says 503."""

    base: str
    qdrant: bool = False
    outcomes: list[int | str] = field(default_factory=list)
    open: bool = True
    saw_503_at: float | None = None
    signalled: float = float("inf")
    kept_alive_in_drain: int = 0  # answers after SIGTERM that did not say Connection: close

    async def client(self, session: aiohttp.ClientSession, n: int) -> None:
        i = 0
        while self.open:
            url, body = self._search(n, i)
            try:
                async with session.post(url, json=body) as response:
                    await response.read()
                    self.outcomes.append(response.status)
                    if time.monotonic() > self.signalled + 0.2 and \
                            response.headers.get("Connection", "").lower() != "close":
                        self.kept_alive_in_drain += 1
            except aiohttp.ClientError as exc:
                self.outcomes.append(type(exc).__name__)
            i += 1
            await asyncio.sleep(0.02)  # about 200 requests a second at most

    def _search(self, n: int, i: int) -> tuple[str, dict[str, Any]]:
        if self.qdrant:
            return (f"{self.base}/collections/products/points/query",
                    {"query": {"text": f"warm jacket {i % 20}", "model": "any"}, "limit": 3})
        return (f"{self.base}/v1/aliases/products/search",
                {"query": f"warm jacket {i % 20}", "user_id": f"user-{n}-{i}"})

    async def balancer(self, session: aiohttp.ClientSession) -> None:
        while True:
            async with session.get(f"{self.base}/readyz") as response:
                if response.status == 503:
                    self.saw_503_at = time.monotonic()
                    await asyncio.sleep(0.3)  # it takes a balancer a moment to act
                    self.open = False
                    return
            await asyncio.sleep(0.1)


async def test_sigterm_under_load_loses_no_request_on_either_port_and_exits_within_the_bound(
        start_serving: StartServing) -> None:
    qdrant_port = free_port()
    serving = start_serving(EMBEDSHIFT_DRAIN_S=str(DRAIN_S),
                            EMBEDSHIFT_SHUTDOWN_TIMEOUT_S=str(SHUTDOWN_S),
                            EMBEDSHIFT_QDRANT_PORT=str(qdrant_port))
    await _wait_ready(serving, timeout_s=240)
    loads = [Load(serving.base), Load(f"http://127.0.0.1:{qdrant_port}", qdrant=True)]
    async with aiohttp.ClientSession() as session:
        clients = [asyncio.create_task(load.client(session, n))
                   for load, count in zip(loads, (8, 4), strict=True) for n in range(count)]
        watching = [asyncio.create_task(load.balancer(session)) for load in loads]
        await asyncio.sleep(1.5)
        before = [len(load.outcomes) for load in loads]
        signalled = time.monotonic()
        for load in loads:
            load.signalled = signalled
        serving.process.send_signal(signal.SIGTERM)
        serving.process.send_signal(signal.SIGTERM)  # the same signal delivered twice, as
        # `uv run` under a terminal does: still one graceful drain
        await asyncio.wait_for(asyncio.gather(*watching), timeout=10)
        await asyncio.gather(*clients)
    exit_code = await asyncio.to_thread(serving.process.wait, DRAIN_S + SHUTDOWN_S + 30)
    stopped_after = time.monotonic() - signalled
    for load, earlier in zip(loads, before, strict=True):
        outcomes = load.outcomes
        print(f"{'qdrant' if load.qdrant else 'native'}: {len(outcomes)} requests, "
              f"{len(outcomes) - earlier} after SIGTERM, readyz 503 after "
              f"{(load.saw_503_at or 0) - signalled:.2f}s, exit after {stopped_after:.2f}s "
              f"(drain {DRAIN_S}s)")
    for load, earlier in zip(loads, before, strict=True):
        outcomes = load.outcomes
        assert load.saw_503_at is not None and load.saw_503_at - signalled < 1.0
        assert earlier > 20 and len(outcomes) > earlier, (earlier, len(outcomes))
        assert set(outcomes) == {200}, {o: outcomes.count(o) for o in set(outcomes)}
        assert load.kept_alive_in_drain == 0  # every answer in the drain closed its connection
    assert exit_code == 0, serving.log.read_text()[-2000:]
    assert '"event":"stopped"' in serving.log.read_text()
    assert DRAIN_S <= stopped_after < DRAIN_S + SHUTDOWN_S + 10, stopped_after


async def test_a_second_signal_later_exits_at_once(serving: Serving) -> None:
    await _wait_ready(serving, timeout_s=240)
    serving.process.send_signal(signal.SIGTERM)
    await asyncio.sleep(0.8)  # draining: DRAIN_S has not passed
    asked = time.monotonic()
    serving.process.send_signal(signal.SIGTERM)
    exit_code = await asyncio.to_thread(serving.process.wait, 10)
    assert exit_code == 128 + signal.SIGTERM and time.monotonic() - asked < DRAIN_S
    assert '"event":"second_signal"' in serving.log.read_text()


async def test_the_cli_finds_the_proxy_serve_runs_here_and_serve_cleans_up(
        serving: Serving) -> None:
    """serve ran with its own data folder and port; a CLI started in the same folder with
    neither finds them, and once serve stops its record and its redis-server are gone."""
    await _wait_ready(serving, timeout_s=240)
    record = serving.here / ".embedshift" / "serve.json"
    assert record.stat().st_mode & 0o777 == 0o600
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("EMBEDSHIFT_") and k not in ("REDIS_URL", "QDRANT_URL")}
    found = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "proxy.cli.main", "status", "products", "--json"],
        cwd=serving.here, env=env, capture_output=True, text=True, timeout=60, check=False)
    assert found.returncode == 0, found.stderr
    assert json.loads(found.stdout)[0]["rollout"]["alias"] == "products"
    serving.process.send_signal(signal.SIGTERM)
    assert await asyncio.to_thread(serving.process.wait, DRAIN_S + SHUTDOWN_S + 30) == 0
    assert not record.exists()
    assert not EmbeddedRedis(serving.data, {}).is_running()
