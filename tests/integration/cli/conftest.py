"""`embedshift serve` started as a user starts it, on embedded defaults in its own data folder."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest

from loadtest.ports import free_port
from proxy.state.redis_server import EmbeddedRedis


@dataclass
class Serving:
    process: subprocess.Popen[bytes]
    base: str
    log: Path
    here: Path  # the folder it was started in
    data: Path
    port: int


StartServing = Callable[..., Serving]


@pytest.fixture
def start_serving(tmp_path: Path, models_dir: Path) -> Iterator[StartServing]:
    """Starts `embedshift serve` with extra environment and, if asked, an open-file limit (soft
    and hard, as `ulimit -n` sets them); models built once per session are linked in."""
    started: list[Serving] = []

    def start(fd_limit: int | None = None, **env_extra: str) -> Serving:
        data = tmp_path / "data"
        data.mkdir()
        (data / "models").symlink_to(models_dir)
        port = free_port()
        env = {**os.environ, "EMBEDSHIFT_DATA_DIR": str(data), "EMBEDSHIFT_PORT": str(port),
               **env_extra}
        for name in ("REDIS_URL", "QDRANT_URL"):
            env.pop(name, None)
        command = [sys.executable, "-m", "proxy.cli.main", "serve"]
        if fd_limit is not None:  # as a user's shell sets it
            command = ["bash", "-c", f'ulimit -n {fd_limit} && exec "$@"', "serve", *command]
        log = tmp_path / "serve.log"  # a file, not a pipe: one log line per query fills a pipe
        with log.open("wb") as log_file:
            process = subprocess.Popen(command, cwd=tmp_path, env=env,
                                       stdout=subprocess.DEVNULL, stderr=log_file)
        started.append(Serving(process, f"http://127.0.0.1:{port}", log, tmp_path, data, port))
        return started[-1]

    yield start
    for serving in started:
        if serving.process.poll() is None:
            serving.process.kill()
            serving.process.wait()
        EmbeddedRedis(serving.data, {}).stop()


@pytest.fixture
def serving(start_serving: StartServing) -> Serving:
    return start_serving(EMBEDSHIFT_DRAIN_S=str(DRAIN_S),
                         EMBEDSHIFT_SHUTDOWN_TIMEOUT_S=str(SHUTDOWN_S))


DRAIN_S, SHUTDOWN_S = 1.5, 5.0


async def wait_ready(serving: Serving, timeout_s: float) -> None:
    await wait_until_ready(serving.process, serving.base, serving.log, timeout_s)


async def wait_until_ready(process: subprocess.Popen[bytes], base: str, log: Path,
                           timeout_s: float) -> None:
    """Until ``base``/readyz says 200; the end of ``log`` if the process exits first."""
    deadline = time.monotonic() + timeout_s
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            assert process.poll() is None, log.read_text()[-3000:]  # noqa: ASYNC240 - dead only
            try:
                async with session.get(f"{base}/readyz") as response:
                    if response.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.2)
    raise AssertionError(f"not ready within {timeout_s:g} s")
