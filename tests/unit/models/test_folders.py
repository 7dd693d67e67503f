"""A model folder's config files decide each vector setting once, or name the flag to pass."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import pytest

from proxy.models.folders import Choices, read_folder
from rollout_rules.errors import ModelError


def make(folder: Path, files: Mapping[str, object]) -> Path:
    """A folder with an (empty) graph, a tokenizer and the given JSON config files."""
    for name, content in {"model.onnx": "", "tokenizer.json": {}, **files}.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content if isinstance(content, str) else json.dumps(content))
    return folder


OLD: dict[str, object] = {"1_Pooling/config.json": {"word_embedding_dimension": 768,
                                 "pooling_mode_cls_token": True},
       "sentence_bert_config.json": {"max_seq_length": 384},
       "tokenizer_config.json": {"model_max_length": 512},
       "modules.json": [{"type": "sentence_transformers.models.Transformer"},
                        {"type": "sentence_transformers.models.Normalize"}]}


def test_an_old_format_folder(tmp_path: Path) -> None:
    draft = read_folder(make(tmp_path / "bge-like", OLD))
    m = draft.manifest
    assert (m.dimensions, m.pooling, m.max_length, m.normalize) == (768, "cls", 384, True)
    assert draft.decided["max_length"] == "sentence_bert_config.json max_seq_length"
    assert m.model_id == "bge-like"


def test_a_current_format_folder(tmp_path: Path) -> None:
    draft = read_folder(make(tmp_path / "f", {
        "1_Pooling/config.json": {"embedding_dimension": 1024, "pooling_mode": "lasttoken"},
        "sentence_bert_config.json": {},
        "tokenizer_config.json": {"model_max_length": 8192},
        "config_sentence_transformers.json": {"prompts": {"query": "query: ", "document": ""}},
        "modules.json": [{"type": "sentence_transformers.base.modules.normalize.Normalize"}]}))
    m = draft.manifest
    assert (m.dimensions, m.pooling, m.max_length, m.normalize) == (1024, "lasttoken", 8192, True)
    assert m.query_prefix == "query: "


def test_an_unbounded_tokenizer_limit_falls_back_to_the_positions(tmp_path: Path) -> None:
    draft = read_folder(make(tmp_path / "f", {
        **OLD, "sentence_bert_config.json": {},
        "tokenizer_config.json": {"model_max_length": 1e30},
        "config.json": {"model_type": "xlm-roberta", "max_position_embeddings": 514}}))
    assert draft.manifest.max_length == 512  # RoBERTa keeps two positions for padding
    assert draft.decided["max_length"] == "config.json max_position_embeddings"


def test_no_normalize_module_means_unnormalised(tmp_path: Path) -> None:
    draft = read_folder(make(tmp_path / "f", {
        **OLD, "modules.json": [{"type": "sentence_transformers.models.Transformer"}]}))
    assert not draft.manifest.normalize
    assert draft.decided["normalize"] == "modules.json has no Normalize module"


@pytest.mark.parametrize(("files", "says"), [
    ({**OLD, "1_Pooling/config.json": {"word_embedding_dimension": 8,
                                       "pooling_mode_mean_tokens": True,
                                       "pooling_mode_max_tokens": True}},
     "exactly one of mean, cls, max, lasttoken; this config turns on mean, max"),
    ({**OLD, "1_Pooling/config.json": {"word_embedding_dimension": 8,
                                       "pooling_mode_weightedmean_tokens": True}},
     "turns on pooling_mode_weightedmean_tokens"),
    ({**OLD, "modules.json": "not json"}, "modules.json is not valid JSON"),
])
def test_what_embedshift_cannot_read_right_is_refused(tmp_path: Path, files: dict[str, object],
                                                      says: str) -> None:
    with pytest.raises(ModelError, match=says.replace("(", r"\(")):
        read_folder(make(tmp_path / "f", files))


def test_flags_override_the_folder(tmp_path: Path) -> None:
    draft = read_folder(make(tmp_path / "f", OLD), Choices(
        pooling="mean", normalize=False, max_length=128, model_id="org/model"))
    m = draft.manifest
    assert (m.pooling, m.normalize, m.max_length, m.model_id) == ("mean", False, 128, "org/model")
    assert draft.decided["normalize"] == "--no-normalize"


@pytest.mark.parametrize(("model_type", "limit"), [("mpnet", 512), ("roberta", 512),
                                                  ("bert", 514)])
def test_the_position_limit_is_the_architectures_own(tmp_path: Path, model_type: str,
                                                    limit: int) -> None:
    """MPNet and RoBERTa number positions from the padding index + 1, so 514 positions hold
    512 tokens: 513 is refused when the folder is read, before any export or run, naming the
    limit; a BERT config's 514 are all usable."""
    config = {"model_type": model_type, "max_position_embeddings": 514, "pad_token_id": 1}
    folder = make(tmp_path / model_type, {**OLD, "config.json": config})
    assert read_folder(folder, Choices(max_length=limit)).manifest.max_length == limit
    with pytest.raises(ModelError) as refused:
        read_folder(folder, Choices(max_length=limit + 1))
    assert f"exceeds the model's {limit} positions" in str(refused.value)
    assert f"pass --max-length {limit} or less" in str(refused.value)
