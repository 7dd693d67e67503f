"""The fake and a real ONNX model both give batch-independent unit vectors to the query encoder."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from proxy.models.encoders import OnnxModel, QueryEncoder, TextModel, clean_text
from proxy.models.fake import HashModel

TEXTS = ["warm winter jacket", "a warm jacket for the winter", "boil water on a camp stove",
         "Tents", "a much longer text about sleeping bags rated for nights below freezing, "
         "with a hood, a draft collar and a compression sack for the trail"]


@pytest.fixture(params=["fake", "onnx"])
def model(request: pytest.FixtureRequest) -> TextModel:
    if request.param == "fake":
        return HashModel()
    models_dir: Path = request.getfixturevalue("models_dir")
    return OnnxModel(models_dir / "paraphrase-MiniLM-L3-v2")


@pytest.fixture(scope="module")
def executor() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(max_workers=2) as pool:
        yield pool


def test_vectors_are_unit_length_float32_of_the_declared_size(model: TextModel) -> None:
    vectors = model.embed(TEXTS)
    assert vectors.shape == (len(TEXTS), model.dimensions) and vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_a_text_has_the_same_vector_alone_in_a_batch_and_in_a_corpus(model: TextModel) -> None:
    alone = np.stack([model.embed([text])[0] for text in TEXTS])
    together = model.embed(TEXTS)
    corpus = model.embed_many(TEXTS * 3, batch_size=4)
    assert (alone * together).sum(axis=1).min() >= 0.9999
    assert (np.tile(alone, (3, 1)) * corpus).sum(axis=1).min() >= 0.9999


def test_related_texts_are_closer_than_unrelated_ones(model: TextModel) -> None:
    jacket, jacket_again, stove = model.embed(TEXTS[:3])
    assert float(jacket @ jacket_again) > float(jacket @ stove) + 0.1


async def test_the_query_encoder_caches_shares_and_batches(model: TextModel,
                                                           executor: ThreadPoolExecutor) -> None:
    encoder = QueryEncoder(model, executor, cache_size=100, max_batch=8, max_wait_ms=2)
    texts = [clean_text(f"query   number {i} ") for i in range(24)] + [clean_text("same")] * 8
    results = await asyncio.gather(*(encoder.encode(t) for t in texts))
    assert encoder.batched_texts == 25 and encoder.batches < 25  # "same" ran once; batched
    expected = model.embed([t for t in texts[:25]])
    assert (np.stack([v for v, _ in results[:25]]) * expected).sum(axis=1).min() >= 0.9999
    vector, cached = await encoder.encode("same")
    assert cached and np.array_equal(vector, results[-1][0])
