"""A migration of N documents (default 1,000,000) through every stage, for what scale costs.

Ingestion into v1, the backfill into v2 (two workers, through the Redis job queue), verify and
archive run in this process on the real redis-server and Qdrant's embedded engine, with the fake
encoder in process (``HashModel``, 32 dimensions: the model's own cost is not what is measured
here, embedshift's is). It samples this process's resident memory twice a second and times, as
the corpus grows, what one coverage recount costs (a backfill batch pays one). It writes
``scale-run.json`` and ``scale-run.png`` (memory over time by stage; coverage recount against
corpus size) into ``--out``.

    uv run python -m loadtest.scale_run --documents 1000000 --out /tmp/scale
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import msgspec
from msgspec.structs import replace

from proxy.config import Settings
from proxy.ingest.archive import archive
from proxy.ingest.backfill import Backfill, Options
from proxy.ingest.documents import Document
from proxy.ingest.verify import verify
from proxy.ingest.writer import Ingestor
from proxy.models.fake import HashModel
from proxy.models.loader import ModelCache
from proxy.state.client import connect
from proxy.state.redis_server import EmbeddedRedis
from proxy.state.rulestore import RedisRuleStore
from proxy.vectors.edge import EdgeStore
from rollout_rules.model import Rollout, Target, Version

DIMENSIONS = 32
WORDS = ("alpine", "meadow", "granite", "river", "cedar", "harbor", "lantern", "orchard",
         "canyon", "glacier", "prairie", "tundra", "delta", "summit", "lagoon", "marsh")


def documents(count: int, batch: int) -> Iterator[list[Document]]:
    """The corpus, made batch by batch (never whole)."""
    for start in range(0, count, batch):
        yield [Document(id=i, text=f"{WORDS[i % 16]} {WORDS[(i // 16) % 16]} "
                                   f"{WORDS[(i // 256) % 16]} report {i}")
               for i in range(start, min(count, start + batch))]


class Memory:
    """This process's resident memory, sampled on a thread twice a second, by stage."""

    def __init__(self) -> None:
        self.samples: list[tuple[float, float, str]] = []  # seconds, MiB, stage
        self.stage = "start"
        self._began = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Memory:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(0.5):
            self.samples.append((time.monotonic() - self._began, rss_mib(), self.stage))

    def peak(self, stage: str) -> float:
        return max((mib for _, mib, s in self.samples if s == stage), default=0.0)


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


async def run(count: int, out: Path, work: Path) -> dict[str, object]:
    redis = EmbeddedRedis(work, os.environ)
    redis.start()
    rules = RedisRuleStore(connect(Settings(), redis.url), "scale")
    store = EdgeStore(work / "qdrant")
    models = {"fake-a": HashModel("fake-a", DIMENSIONS), "fake-b": HashModel("fake-b", DIMENSIONS)}
    ingestor = Ingestor(store, rules, ModelCache(work, load=lambda v: models[v.model]))
    v1 = Version(name="v1", model="fake-a", dimensions=DIMENSIONS,
                 target=Target(collection="scale_v1"))
    v2 = Version(name="v2", model="fake-b", dimensions=DIMENSIONS,
                 target=Target(collection="scale_v2"))
    stages: dict[str, float] = {}
    recounts: list[tuple[int, float]] = []
    try:
        rollout = await rules.create(Rollout(alias="scale", versions=(v1,), stable="v1"),
                                     "scale-run", "declare")
        with Memory() as memory:
            memory.stage = "ingest"
            began = time.monotonic()
            written = 0
            for batch in documents(count, 1000):
                await ingestor.write(rollout, batch)
                written += len(batch)
                if written % max(1000, count // 10) == 0:
                    recounts.append((written, await _recount(ingestor, rollout)))
                    print(f"ingested {written:,} documents, {rss_mib():.0f} MiB", flush=True)
            stages["ingest"] = time.monotonic() - began
            rollout = await rules.write(replace(rollout, versions=(v1, v2), candidate="v2"),
                                        rollout.revision, "scale-run", "add v2")
            memory.stage = "backfill"
            began = time.monotonic()
            backfill = Backfill(ingestor, rules.backfill_queue, "scale")
            await backfill.start(rollout, Options(workers=2, batch_size=500, rate=None))
            await asyncio.gather(*backfill.tasks["scale"])
            stages["backfill"] = time.monotonic() - began
            recounts.append((count, await _recount(ingestor, rollout)))
            memory.stage = "verify"
            began = time.monotonic()
            report = await verify(ingestor, rollout, sample=50)
            stages["verify"] = time.monotonic() - began
            retired = await rules.write(replace(rollout, stable="v2", candidate=None,
                                                versions=(v1, v2)), rollout.revision,
                                        "scale-run", "promote and retire v1")
            retired = await rules.write(replace(retired, versions=(v2,)), retired.revision,
                                        "scale-run", "retire v1")
            memory.stage = "archive"
            began = time.monotonic()
            info = await archive(ingestor, replace(retired, versions=(v1, v2)), "v1",
                                 work / "archives", keep=1)
            stages["archive"] = time.monotonic() - began
            memory.stage = "done"
        figures: dict[str, object] = {
            "documents": count, "dimensions": DIMENSIONS, "seconds": stages,
            "docs_per_s": {k: round(count / v) for k, v in stages.items() if v > 0},
            "peak_rss_mib": {s: round(memory.peak(s)) for s in stages},
            "coverage_recount_s": recounts, "verify_passed": report.passed,
            "archive": msgspec.to_builtins(info)}
        _plot(memory.samples, recounts, out / "scale-run.png", count)
        return figures
    finally:
        await store.close()
        await rules.aclose()
        redis.stop()


async def _recount(ingestor: Ingestor, rollout: Rollout) -> float:
    began = time.perf_counter()
    await ingestor.accounting.count(rollout)
    return round(time.perf_counter() - began, 4)


def _plot(samples: list[tuple[float, float, str]], recounts: list[tuple[int, float]],
          path: Path, count: int) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    for stage in dict.fromkeys(s for _, _, s in samples):
        points = [(t, mib) for t, mib, s in samples if s == stage]
        left.plot([t for t, _ in points], [m for _, m in points], label=stage)
    left.set(xlabel="seconds", ylabel="resident memory (MiB)",
             title=f"embedshift process, {count:,} documents")
    left.legend()
    right.plot([n for n, _ in recounts], [s * 1000 for _, s in recounts], marker="o")
    right.set(xlabel="documents in stable", ylabel="ms", title="one coverage recount",
              ylim=(0, max(s * 1000 for _, s in recounts) * 1.5))
    figure.tight_layout()
    figure.savefig(path, dpi=100)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--documents", type=int, default=1_000_000)
    parser.add_argument("--out", type=Path, default=Path("."))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="scale-run-") as work:
        figures = asyncio.run(run(args.documents, args.out, Path(work)))
    (args.out / "scale-run.json").write_bytes(msgspec.json.format(msgspec.json.encode(figures)))
    print(msgspec.json.format(msgspec.json.encode(figures)).decode())


if __name__ == "__main__":
    main()
