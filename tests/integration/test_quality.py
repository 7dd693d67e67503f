"""Retrieval quality on BEIR SciFact: a wrong tokenizer, pooling or normalisation still returns
numbers, just worse search; these figures catch it. Reference: MTEB reports nDCG@10 0.645 for
all-MiniLM-L6-v2; paraphrase-MiniLM-L3-v2 measures 0.513 here (no published figure)."""

from __future__ import annotations

from pathlib import Path

import pytest

from proxy.encoders import OnnxModel, default_threads
from proxy.evaluation import Dataset, Scores, evaluate, load_beir
from tests.paths import shared_path

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def scifact() -> Dataset:
    return load_beir(shared_path("data", "scifact"))


@pytest.fixture(scope="module")
def scores(scifact: Dataset, models_dir: Path) -> dict[str, Scores]:
    names = ["all-MiniLM-L6-v2", "all-MiniLM-L6-v2-int8", "paraphrase-MiniLM-L3-v2"]
    return {name: evaluate(OnnxModel(models_dir / name, threads=default_threads()), scifact)
            for name in names}


def test_all_minilm_l6_reproduces_its_published_quality(scores: dict[str, Scores]) -> None:
    result = scores["all-MiniLM-L6-v2"]
    assert (result.queries, result.documents) == (300, 5183)
    assert result.ndcg_at_10 == pytest.approx(0.645, abs=0.005)


def test_paraphrase_minilm_l3_gives_its_own_figure(scores: dict[str, Scores]) -> None:
    assert scores["paraphrase-MiniLM-L3-v2"].ndcg_at_10 == pytest.approx(0.513, abs=0.005)


def test_int8_stays_within_the_quality_budget(scores: dict[str, Scores]) -> None:
    fp32, int8 = scores["all-MiniLM-L6-v2"], scores["all-MiniLM-L6-v2-int8"]
    assert abs(int8.ndcg_at_10 - fp32.ndcg_at_10) <= 0.005
