"""A failed start-up names the mismatch and leaves no task or pool running behind it."""

from __future__ import annotations

import asyncio

import pytest
from aiohttp import web
from msgspec.structs import replace
from opentelemetry.sdk.trace import TracerProvider

from proxy.config import Settings
from proxy.state.memory import MemoryRuleStore
from proxy.web.app import Deps, make_app
from rollout_rules.errors import ModelError
from tests.unit.core.rollouts import rollout
from tests.unit.fakes import BreakableStore, fake_models, load_catalogue


async def _start(declared_v2_model: str) -> web.AppRunner:
    vectors = BreakableStore()
    await load_catalogue(vectors, rollout())  # p_v2 was encoded with m/l6
    rules = MemoryRuleStore()
    declared = rollout()
    await rules.create(replace(declared, versions=(declared.versions[0], replace(
        declared.versions[1], model=declared_v2_model))), "ops", "declare")
    app = make_app(Settings(), Deps(rules_store=rules, vector_store=vectors,
                                    tracer_provider=TracerProvider(), models=fake_models()))
    runner = web.AppRunner(app)
    await runner.setup()
    return runner


def _background() -> set[str]:
    return {t.get_name() for t in asyncio.all_tasks() if t is not asyncio.current_task()}


async def test_a_mismatched_collection_stops_start_up_and_everything_it_began() -> None:
    before = _background()
    with pytest.raises(ModelError, match="v2 is m/other, collection p_v2 was encoded with m/l6"):
        await _start("m/other")
    await asyncio.sleep(0)
    assert _background() - before == set()  # no rules-listen / rules-poll task left behind


async def test_a_matching_start_up_runs_the_watcher_until_cleanup() -> None:
    runner = await _start("m/l6")
    assert {"rules-listen", "rules-poll"} <= _background()
    await runner.cleanup()
    assert not {"rules-listen", "rules-poll"} & _background()
