"""A restart on embedded defaults never overwrites coverage an operator or the backfill wrote."""

from __future__ import annotations

from proxy.cli.serve import DEMO_ALIAS, prepare_demo
from proxy.models.encoders import TextModel
from proxy.models.fake import HashModel
from proxy.state.memory import MemoryRuleStore
from proxy.vectors.memory import MemoryStore
from rollout_rules.model import Version


class FakeModels:
    async def get(self, version: Version) -> TextModel:
        return HashModel(version.model, version.dimensions)


async def test_the_demo_seeds_coverage_once_and_restarts_keep_what_was_written() -> None:
    rules, vectors = MemoryRuleStore(), MemoryStore()
    await prepare_demo(rules, vectors, FakeModels())
    assert await rules.coverage(DEMO_ALIAS) == {"v1": 1.0, "v2": 0.6}
    await rules.set_coverage(DEMO_ALIAS, "v2", 300, 300)  # the backfill finished
    await prepare_demo(rules, vectors, FakeModels())  # a restart
    assert await rules.coverage(DEMO_ALIAS) == {"v1": 1.0, "v2": 1.0}
    await vectors.close()
