"""A backfill killed with SIGKILL five times resumes to exactly stable's documents.

Through the CLI against `embedshift serve --no-demo`: ingest a JSONL file (a bad line named, the
rest written), add the candidate, then kill the process running the backfill at random moments
and start it again each time."""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest
from msgspec.structs import replace

from loadtest.ports import free_port
from proxy.cli.main import main
from proxy.config import Settings
from proxy.models.catalog import default_rollout
from proxy.state.client import connect
from proxy.state.redis_server import EmbeddedRedis
from proxy.state.rulestore import RedisRuleStore
from proxy.vectors.edge import EdgeStore
from rollout_rules.model import to_builtins
from tests.integration.cli.conftest import wait_until_ready
from tests.integration.ingest.conftest import corpus
from tests.paths import REPO

pytestmark = pytest.mark.integration
TOKEN = "kill-test-token"
DOCS = 1200


class Proxy:
    def __init__(self, tmp_path: Path, models_dir: Path, redis_url: str, prefix: str) -> None:
        self.data = tmp_path / "data"
        self.data.mkdir()
        (self.data / "models").symlink_to(models_dir)
        self.port = free_port()
        self.env = {**os.environ, "EMBEDSHIFT_DATA_DIR": str(self.data),
                    "EMBEDSHIFT_PORT": str(self.port), "REDIS_URL": redis_url,
                    "EMBEDSHIFT_REDIS_PREFIX": prefix, "EMBEDSHIFT_ADMIN_TOKEN": TOKEN,
                    "EMBEDSHIFT_DRAIN_S": "0"}
        self.env.pop("QDRANT_URL", None)
        self.log = tmp_path / "serve.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "proxy.cli.main", "serve", "--no-demo"], cwd=REPO,
                env=self.env, stdout=subprocess.DEVNULL, stderr=log)
        asyncio.run(wait_until_ready(self.process, self.base, self.log, 120))

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(sig)
            self.process.wait(timeout=60)

    def cli(self, *argv: str) -> int:
        return main([*argv, "--url", self.base], self.env)


@pytest.fixture
def proxy(tmp_path: Path, models_dir: Path, redis_server: EmbeddedRedis, prefix: str
          ) -> Iterator[Proxy]:
    serving = Proxy(tmp_path, models_dir, redis_server.url, prefix)
    yield serving
    serving.kill()


def _rules_file(path: Path, with_candidate: bool) -> Path:
    rollout = default_rollout("docs")
    if not with_candidate:
        rollout = replace(rollout, candidate=None, versions=rollout.versions[:1])
    path.write_text(json.dumps(to_builtins(rollout)))
    return path


def test_a_backfill_killed_five_times_resumes_to_exactly_stables_documents(
        proxy: Proxy, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rng = random.Random(11)
    proxy.start()
    assert main(["init", "docs", "--file", str(_rules_file(tmp_path / "v1.json", False))],
                proxy.env) == 0
    lines = [msgspec.json.encode(d).decode() for d in corpus(DOCS)]
    lines.insert(4, '{"id": 99999, "text": ""}')  # line 5: empty text
    (tmp_path / "docs.jsonl").write_text("\n".join(lines) + "\n")
    capsys.readouterr()
    assert proxy.cli("ingest", "docs", str(tmp_path / "docs.jsonl")) == 3
    err = capsys.readouterr().err
    assert f"{tmp_path / 'docs.jsonl'}:5: text: is empty" in err, err
    assert main(["init", "docs", "--force", "--file",
                 str(_rules_file(tmp_path / "v2.json", True))], proxy.env) == 0
    time.sleep(0.5)  # the proxy prepares the new version in the background

    done_at_kill = []
    for _ in range(5):
        assert proxy.cli("backfill", "docs", "--detach", "--batch", "25") == 0
        time.sleep(rng.uniform(0.3, 2.0))
        capsys.readouterr()
        assert proxy.cli("backfill", "docs", "--status", "--json") == 0
        done_at_kill.append(json.loads(capsys.readouterr().out)["job"]["done_docs"])
        proxy.kill()  # SIGKILL: mid-batch, wherever it is
        proxy.start()
    assert done_at_kill == sorted(done_at_kill), done_at_kill  # resumed, never started over
    assert sum(0 < done < DOCS for done in done_at_kill) >= 3, done_at_kill
    assert proxy.log.read_text().count('"backfill_planned"') == 1  # one plan, resumed 5 times
    capsys.readouterr()
    assert proxy.cli("backfill", "docs", "--json") == 0
    final = json.loads(capsys.readouterr().out)
    assert final["state"] == "done", final
    assert final["job"]["done_docs"] >= 1, final
    assert proxy.cli("verify", "docs", "--sample", "20") == 0
    assert "verify docs: v2 against v1 PASSED" in capsys.readouterr().out
    assert main(["promote", "docs", "--reason", "verified"], proxy.env) == 0
    proxy.kill(signal.SIGTERM)

    asyncio.run(check(proxy))


async def check(proxy: Proxy) -> None:
    """Read back from Redis and the engine's files what the killed proxies left."""
    rules = RedisRuleStore(connect(Settings(), proxy.env["REDIS_URL"]),
                           proxy.env["EMBEDSHIFT_REDIS_PREFIX"])
    assert await rules.coverage("docs") == {"v1": 1.0, "v2": 1.0}
    assert (await rules.get("docs")).stable == "v2"
    await rules.aclose()
    store = EdgeStore(proxy.data / "qdrant")
    rollout = default_rollout("docs")
    ids = {}
    for name in ("v1", "v2"):
        found, offset = [], None
        while True:
            page, offset = await store.scroll(rollout.version(name).target, offset, 1000,
                                              ["_embedshift.doc_id"])
            found += [p.payload["_embedshift"]["doc_id"] for p in page]
            if offset is None:
                break
        ids[name] = found
        assert await store.count(rollout.version(name).target) == DOCS
    await store.close()
    assert sorted(ids["v1"]) == sorted(ids["v2"]) == list(range(DOCS))

