"""The fake embeddings service and a real one (Infinity) answer as a served model reads them.

Catalogued by the same checks, vectors in the texts' order, tokens counted, a refusal not
retried, no drift while nothing changes."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from dataclasses import dataclass

import numpy as np
import pytest
from aiohttp.test_utils import TestServer

from proxy.models.fake import FakeEmbeddingsService
from proxy.models.served import ServedModel, ServedSpec, examine
from rollout_rules.errors import ModelError
from tests.servers import KEY, SERVED_NAME, Infinity

TEXTS = ["warm winter jacket", "a warm jacket for the winter", "boil water on a camp stove",
         "Tents", "a much longer text about sleeping bags rated for nights below freezing, "
         "with a hood, a draft collar and a compression sack for the trail"]


@dataclass
class Service:
    url: str
    model_id: str
    key: str


@pytest.fixture(params=["fake", "infinity"])
async def service(request: pytest.FixtureRequest) -> AsyncIterator[Service]:
    if request.param == "infinity":
        server: Infinity = request.getfixturevalue("infinity")
        yield Service(server.url, SERVED_NAME, KEY)
        return
    fake = FakeEmbeddingsService(served_name="fake-embedder", key="fake-key-0a1b")
    test_server = TestServer(fake.app(), host="127.0.0.1")
    await test_server.start_server()
    yield Service(str(test_server.make_url("/v1")), "fake-embedder", fake.key)
    await test_server.close()


async def test_it_is_catalogued_by_the_checks_with_a_stable_fingerprint(service: Service
                                                                         ) -> None:
    draft = ServedSpec(url=service.url, model_id=service.model_id, dimensions=0)
    spec = await examine(draft, "m", service.key)
    again = await examine(draft, "m", service.key)
    assert spec.dimensions == 384 and spec.normalize
    assert spec.fingerprint == again.fingerprint and spec.identity == again.identity
    assert len(spec.probes) == 5 and spec.checks[1].startswith("batch vs single: min cosine")
    model = ServedModel(spec, "m", api_key=service.key)
    try:
        assert await model.drift() >= 0.9999  # nothing changed
    finally:
        await model.aclose()


async def test_vectors_come_back_in_the_order_of_the_texts_and_tokens_are_counted(
        service: Service) -> None:
    spec = ServedSpec(url=service.url, model_id=service.model_id, dimensions=384, max_batch=2)
    model = ServedModel(spec, "m", api_key=service.key)
    try:
        alone = np.concatenate([await model.aembed([text], live=True) for text in TEXTS])
        shuffled = random.Random(7).sample(range(len(TEXTS)), len(TEXTS))
        together = await model.aembed([TEXTS[i] for i in shuffled], live=False)
        assert together.shape == (len(TEXTS), 384) and together.dtype == np.float32
        assert (together * alone[shuffled]).sum(axis=1).min() >= 0.999
        assert model.spent.requests == len(TEXTS) + 3  # cut at max_batch 2
        assert model.spent.texts == 2 * len(TEXTS) and model.spent.tokens > len(TEXTS)
    finally:
        await model.aclose()


async def test_a_refusal_is_not_retried_and_the_key_is_never_repeated(service: Service) -> None:
    wrong = "wrong-key-" + service.key
    model = ServedModel(ServedSpec(url=service.url, model_id=service.model_id, dimensions=384),
                        "m", api_key=wrong)
    try:
        with pytest.raises(ModelError, match=r"^model m: the service answered 401") as raised:
            await model.aembed(["hello"], live=False)
        assert model.spent.retries == 0 and model.circuit.failures == 0
        assert service.key not in str(raised.value)
    finally:
        await model.aclose()
