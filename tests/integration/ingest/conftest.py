"""A fresh engine and alias per test, on the real redis-server and the real ONNX models."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from msgspec.structs import replace

from loadtest.corpus import corpus
from proxy.config import Settings
from proxy.ingest.backfill import Backfill
from proxy.ingest.writer import Ingestor
from proxy.models.catalog import default_rollout
from proxy.models.encoders import TextModel
from proxy.models.loader import ModelCache
from proxy.state.client import connect
from proxy.state.redis_server import EmbeddedRedis
from proxy.state.rulestore import RedisRuleStore
from proxy.vectors.edge import EdgeStore
from rollout_rules.errors import ConflictError
from rollout_rules.model import Rollout
from tests.integration.conftest import Engine

__all__ = ["CountingModel", "Migration", "corpus"]

class CountingModel:
    """A real model that counts the documents it encodes (to prove none is done twice)."""

    def __init__(self, inner: TextModel, counts: dict[str, int]) -> None:
        self.inner, self.counts = inner, counts
        self.model_id, self.dimensions = inner.model_id, inner.dimensions

    def embed(self, texts: Sequence[str]) -> Any:
        return self.inner.embed(texts)

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        return self.inner.count_tokens(texts)

    def embed_many(self, texts: Sequence[str], batch_size: int = 32) -> Any:
        self.counts[self.model_id] = self.counts.get(self.model_id, 0) + len(texts)
        vectors: np.ndarray[Any, Any] = self.inner.embed_many(texts, batch_size)
        return vectors


@dataclass
class Migration:
    rules: RedisRuleStore
    store: EdgeStore
    models: ModelCache
    ingestor: Ingestor
    encoded: dict[str, int] = field(default_factory=dict)

    def backfill(self, worker: str = "test") -> Backfill:
        return Backfill(self.ingestor, self.rules.backfill_queue, worker)

    async def declare(self, alias: str = "docs", candidate: bool = True) -> Rollout:
        rollout = default_rollout(alias)
        if not candidate:
            rollout = replace(rollout, candidate=None, versions=rollout.versions[:1])
        try:
            return await self.rules.create(rollout, "tests", "declare")
        except ConflictError:
            current = await self.rules.revision(alias)
            return await self.rules.write(rollout, current, "tests", "add the candidate")

    async def ids(self, rollout: Rollout, version: str) -> list[object]:
        target = rollout.version(version).target
        found: list[object] = []
        offset = None
        while True:
            page, offset = await self.store.scroll(target, offset, 1000, ["_embedshift.doc_id"])
            found += [p.payload["_embedshift"]["doc_id"] for p in page]
            if offset is None:
                return found


@pytest.fixture
async def migration(redis_server: EmbeddedRedis, prefix: str, demo_engine: Engine,
                    models_dir: Path, tmp_path: Path) -> AsyncIterator[Migration]:
    rules = RedisRuleStore(connect(Settings(), redis_server.url), prefix)
    store = EdgeStore(tmp_path / "qdrant")
    encoded: dict[str, int] = {}
    models = ModelCache(models_dir, load=lambda v: CountingModel(
        demo_engine.models[(v.model, v.quantization)], encoded))
    yield Migration(rules, store, models, Ingestor(store, rules, models), encoded)
    await store.close()
    await rules.aclose()
