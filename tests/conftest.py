"""Session-wide fixtures: a real redis-server started by the tests themselves; hypothesis
draws the same examples on every run; parallel workers (pytest-xdist) each on ports of their
own, the models built once between them."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from hypothesis import settings

from loadtest.ports import PORTS_VARIABLE, worker_range
from proxy.config import Settings
from proxy.state.client import connect
from proxy.state.redis_server import EmbeddedRedis
from proxy.state.rulestore import RedisRuleStore
from tests.paths import held
from tests.servers import Infinity

# A run fails for a reason, never for a draw: the same examples every run, no example database
# carried between runs, and a failure prints the blob that reproduces it
# (``@reproduce_failure``). HYPOTHESIS_PROFILE=explore draws new examples while hunting bugs.
settings.register_profile("deterministic", derandomize=True, database=None, print_blob=True)
settings.register_profile("explore", print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "deterministic"))


def pytest_configure(config: pytest.Config) -> None:
    """The servers the tests start listen on ports below the kernel's ephemeral range (no
    client's outgoing connection takes one between its pick and its bind), each parallel
    worker (pytest-xdist, ``-n``) on a range of its own."""
    worker = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw"))
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    low, high = worker_range(worker, workers)
    os.environ[PORTS_VARIABLE] = f"{low}-{high}"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The SciFact quality tests first (a stable sort: the rest keep their order): their file is
    the longest, so one worker starts it at once and the others share the rest meanwhile,
    instead of one worker encoding alone at the end."""
    items.sort(key=lambda item: item.get_closest_marker("quality") is None)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedRedis]:
    server = EmbeddedRedis(tmp_path_factory.mktemp("redis"), os.environ)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def prefix() -> str:
    """A key namespace of its own for each test, so tests share one server without meeting."""
    return f"t-{uuid.uuid4().hex[:12]}"


@pytest.fixture
async def store(redis_server: EmbeddedRedis, prefix: str) -> AsyncIterator[RedisRuleStore]:
    rule_store = RedisRuleStore(connect(Settings(), redis_server.url), prefix)
    yield rule_store
    await rule_store.aclose()


def make_server(directory: Path, password: str | None = None) -> EmbeddedRedis:
    return EmbeddedRedis(directory, os.environ, password=password)


@pytest.fixture(scope="session")
def models_dir() -> Path:
    """The default models, built once (from the pinned packages) and reused across runs."""
    from proxy.models.builtin import L3_ID, L6_ID
    from proxy.models.catalog import build_model

    directory = Path(os.environ.get("EMBEDSHIFT_TEST_MODELS",
                                    Path(__file__).resolve().parents[1] / ".embedshift" / "models"))
    with held(directory.with_name(directory.name + ".lock")):  # parallel workers build once
        for model_id, quantization in ((L3_ID, "none"), (L6_ID, "none"), (L6_ID, "int8")):
            build_model(model_id, quantization, directory)
    return directory


@pytest.fixture(scope="session")
def infinity(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Infinity]:
    """A real OpenAI-compatible embeddings server (Infinity) serving all-MiniLM-L6-v2."""
    server = Infinity(tmp_path_factory.mktemp("infinity")).start()
    yield server
    server.stop()
