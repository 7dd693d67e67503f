"""On the fakes the request path routes, falls back, cleans once and refuses as a domain error."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import pytest
from opentelemetry.sdk.trace import TracerProvider

from proxy.models.encoders import Encoder, QueryEncoder
from proxy.models.loader import EncoderKey, encoder_key
from proxy.serving.query import SearchRequest, asked
from proxy.serving.search import Searcher
from proxy.telemetry import Metrics
from rollout_rules.bucket import bucket
from rollout_rules.errors import (
    BackendError,
    EncoderInputError,
    NotFoundError,
    RuleError,
    StoreUnavailable,
)
from rollout_rules.model import Rollout
from tests.unit.core.rollouts import rollout
from tests.unit.fakes import BreakableStore, fake_models, load_catalogue


@dataclass
class Snapshot:
    rollouts: dict[str, Rollout]
    coverage: dict[str, dict[str, float]] = field(default_factory=dict)
    last_error: str | None = None
    loaded: bool = True

    @property
    def age_s(self) -> float | None:
        return 0.0 if self.loaded else None


@pytest.fixture
def executor() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(max_workers=2) as pool:
        yield pool


@pytest.fixture
async def world(executor: ThreadPoolExecutor) -> AsyncIterator[tuple[Searcher, BreakableStore]]:
    rules = rollout(percent=50, overrides={"allow_request": True})
    store = BreakableStore()
    await load_catalogue(store, rules)
    encoders: dict[EncoderKey, Encoder] = {}
    models = fake_models()
    for version in rules.versions:
        encoders[encoder_key(version)] = QueryEncoder(await models.get(version), executor)
    snapshot = Snapshot({"products": rules}, {"products": {"v1": 1.0, "v2": 1.0}})
    searcher = Searcher(snapshot, encoders, store=store, metrics=Metrics(),
                        tracer=TracerProvider().get_tracer("test"))
    yield searcher, store
    await store.close()


def _user(version: str) -> str:
    return next(f"u{i}" for i in range(1000)
                if (bucket("products", f"u{i}") <= 5000) == (version == "v2"))


async def test_each_user_is_searched_in_their_version_s_collection(
        world: tuple[Searcher, BreakableStore]) -> None:
    searcher, _ = world
    for version in ("v1", "v2"):
        answer = await searcher.search("products", asked(SearchRequest(
            query="a warm jacket", user_id=_user(version), limit=2), "r"))
        assert (answer.model_version, answer.collection) == (version, f"p_{version}")
        assert answer.rollout.reason == ("bucket_in" if version == "v2" else "bucket_out")
        assert answer.hits[0].payload == {"text": "warm winter jacket"}


async def test_a_failing_candidate_is_answered_by_stable_and_counted(
        world: tuple[Searcher, BreakableStore]) -> None:
    searcher, store = world
    store.broken.add("p_v2")
    answer = await searcher.search("products", asked(SearchRequest(query="tent",
                                                             user_id=_user("v2")), "r"))
    assert (answer.model_version, answer.rollout.reason) == ("v1", "fallback")
    assert searcher.metrics.registry.get_sample_value(
        "embedshift_fallbacks_total", {"alias": "products", "version": "v2"}) == 1
    store.broken.add("p_v1")
    with pytest.raises(BackendError, match="p_v1"):
        await searcher.search("products", asked(SearchRequest(query="tent", user_id="x"), "r"))


async def test_the_text_is_cleaned_once_and_its_vector_reused(
        world: tuple[Searcher, BreakableStore]) -> None:
    searcher, _ = world
    user = _user("v1")
    for text in ("  stove   for camping ", "stove for camping"):
        answer = await searcher.search("products",
                                       asked(SearchRequest(query=text, user_id=user), "r"))
        assert answer.model_version == "v1"
    encoder = searcher.encoders[encoder_key(rollout().version("v1"))]
    assert isinstance(encoder, QueryEncoder)
    assert (encoder.misses, encoder.batched_texts) == (1, 1)  # the second was a cache answer
    with pytest.raises(EncoderInputError, match="empty"):
        await searcher.search("products", asked(SearchRequest(query=" \n "), "r"))
    assert encoder.batched_texts == 1


async def test_a_version_can_be_requested_only_where_allowed(
        world: tuple[Searcher, BreakableStore]) -> None:
    searcher, _ = world
    forced = await searcher.search("products", asked(SearchRequest(query="tent", version="v2",
                                                             user_id=_user("v1")), "r"))
    assert (forced.model_version, forced.rollout.reason) == ("v2", "override")
    with pytest.raises(RuleError) as caught:
        await searcher.search("products", asked(SearchRequest(query="tent", version="v9"), "r"))
    assert caught.value.field == "version" and "declared: v1, v2" in str(caught.value)


async def test_an_unknown_alias_is_not_found(world: tuple[Searcher, BreakableStore]) -> None:
    with pytest.raises(NotFoundError):
        await world[0].search("nope", asked(SearchRequest(query="tent"), "r"))


async def test_before_the_rules_were_ever_read_an_alias_is_unavailable_not_unknown(
        world: tuple[Searcher, BreakableStore]) -> None:
    searcher = world[0]
    searcher.rules = Snapshot({}, last_error="Redis at 127.0.0.1:6379 is unreachable",
                              loaded=False)
    with pytest.raises(StoreUnavailable, match="not loaded yet: Redis"):
        await searcher.search("products", asked(SearchRequest(query="tent"), "r"))
