"""The BERT builder makes a graph that runs, and refuses weights it cannot build, naming them."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from msgspec.structs import replace

from proxy.models.bert_onnx import BertConfig, Weights, build_bert, expected_shapes
from rollout_rules.errors import ModelError

CONFIG = BertConfig(hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                    intermediate_size=16)


def _weights(config: BertConfig) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(3)
    sizes = {"embeddings.word_embeddings.weight": np.zeros((20, 1), np.float32),
             "embeddings.position_embeddings.weight": np.zeros((16, 1), np.float32),
             "embeddings.token_type_embeddings.weight": np.zeros((2, 1), np.float32)}
    return {k: rng.standard_normal(shape).astype(np.float32)
            for k, shape in expected_shapes(config, sizes).items()}


def test_a_tiny_bert_builds_and_pools_over_the_mask_only() -> None:
    model = build_bert(_weights(CONFIG), CONFIG, "tiny")
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    ids = np.array([[1, 5, 7, 2, 0, 0], [1, 5, 7, 2, 9, 3]], dtype=np.int64)
    mask = np.array([[1, 1, 1, 1, 0, 0], [1] * 6], dtype=np.int64)
    tokens, pooled = session.run(["token_embeddings", "sentence_embedding"],
                                 {"input_ids": ids, "attention_mask": mask})
    assert tokens.shape == (2, 6, 8) and pooled.shape == (2, 8)
    assert np.allclose(pooled[0], tokens[0, :4].mean(axis=0), atol=1e-5)
    alone = session.run(["sentence_embedding"], {"input_ids": ids[:1, :4],
                                                 "attention_mask": mask[:1, :4]})[0]
    assert np.allclose(alone[0], pooled[0], atol=1e-5)  # padding changes nothing


@pytest.mark.parametrize(("damage", "message"), [
    (lambda w, c: ({k: v for k, v in w.items() if "intermediate" not in k}, c),
     "no tensor 'encoder.layer.0.intermediate.dense.weight'"),
    (lambda w, c: (w, replace(c, hidden_act="relu")), "hidden_act='relu'"),
    (lambda w, c: (w, replace(c, num_attention_heads=3)), "not a multiple"),
    (lambda w, c: ({**w, "embeddings.LayerNorm.weight": np.ones(5, np.float32)}, c),
     "'embeddings.LayerNorm.weight' has shape \\(5,\\), the config says \\(8,\\)"),
])
def test_weights_or_settings_it_cannot_build_are_a_model_error(damage: object,
                                                               message: str) -> None:
    weights, config = damage(_weights(CONFIG), CONFIG)  # type: ignore[operator]
    with pytest.raises(ModelError, match=message):
        _check(weights, config)


def _check(weights: Weights, config: BertConfig) -> None:
    build_bert(weights, config, "tiny")
