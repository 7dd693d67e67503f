"""The demo is written through ingestion once, and its coverage is counted, not typed in."""

from __future__ import annotations

from proxy.cli.serve import DEMO_ALIAS, prepare_demo
from proxy.ingest.writer import Ingestor
from proxy.models.encoders import TextModel
from proxy.models.fake import HashModel
from proxy.state.memory import MemoryRuleStore
from proxy.vectors.base import RESERVED
from proxy.vectors.memory import MemoryStore
from rollout_rules.model import Version


class FakeModels:
    def __init__(self) -> None:
        self.encoded = 0

    async def get(self, version: Version) -> TextModel:
        models = self

        class Counting(HashModel):
            def embed_many(self, texts, batch_size=32):  # type: ignore[no-untyped-def]
                models.encoded += len(texts)
                return super().embed_many(texts, batch_size)

        return Counting(version.model, version.dimensions)


async def test_the_demo_is_ingested_once_with_its_text_and_coverage_is_counted() -> None:
    rules, vectors, models = MemoryRuleStore(), MemoryStore(), FakeModels()
    await prepare_demo(rules, Ingestor(vectors, rules, models))
    assert await rules.coverage(DEMO_ALIAS) == {"v1": 1.0, "v2": 0.6}
    assert models.encoded == 300 + 180
    rollout = await rules.get(DEMO_ALIAS)
    point = (await vectors.retrieve(rollout.version("v2").target, [7]))[0]
    assert point.payload[RESERVED]["version"] == "v2"
    assert point.payload[RESERVED]["text"].startswith("Eco hiking boots. A recycled hiking boots")
    await prepare_demo(rules, Ingestor(vectors, rules, models))  # a restart: nothing again
    assert models.encoded == 300 + 180
    assert await rules.coverage(DEMO_ALIAS) == {"v1": 1.0, "v2": 0.6}
    await vectors.close()
