"""The retrieval metrics match hand-worked rankings, and a folder that is not BEIR is refused."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from proxy.models.evaluation import load_beir, mrr, ndcg, recall, score, top_k
from rollout_rules.errors import RuleError


def test_metrics_on_a_hand_worked_ranking() -> None:
    ranking = ["a", "x", "b", "y"]
    relevance = {"a": 1, "b": 1, "c": 1}
    ideal = 1 + 1 / math.log2(3) + 1 / math.log2(4)
    assert ndcg(ranking, relevance, 10) == pytest.approx((1 + 1 / math.log2(4)) / ideal)
    assert recall(ranking, relevance, 2) == pytest.approx(1 / 3)
    assert recall(ranking, relevance, 10) == pytest.approx(2 / 3)
    assert mrr(["x", "b"], relevance, 10) == 0.5
    assert mrr(["x", "y"], relevance, 10) == 0.0


def test_graded_relevance_rewards_the_better_document_first() -> None:
    relevance = {"great": 2, "fine": 1}
    assert ndcg(["great", "fine"], relevance, 10) == pytest.approx(1.0)
    assert ndcg(["fine", "great"], relevance, 10) < 1.0


def test_top_k_orders_by_similarity() -> None:
    docs = np.array([[1.0, 0.0], [0.0, 1.0], [0.7, 0.7]])
    assert top_k(np.array([[1.0, 0.1]]), docs, 2).tolist() == [[0, 2]]


def test_score_needs_a_judged_query() -> None:
    with pytest.raises(RuleError, match="no query has a relevant document"):
        score({"q": ["a"]}, {"q": {"a": 0}}, documents=1)


def test_a_folder_that_is_not_beir_is_refused(tmp_path: Path) -> None:
    with pytest.raises(RuleError, match=r"has no corpus\.jsonl"):
        load_beir(tmp_path)
    (tmp_path / "qrels").mkdir()
    (tmp_path / "corpus.jsonl").write_text('{"_id": "d1", "text": "t"}\n')
    (tmp_path / "queries.jsonl").write_text('{"_id": "q1", "text": "q"}\n')
    (tmp_path / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq1 d1 1\n")
    with pytest.raises(RuleError, match=r"test\.tsv:2"):
        load_beir(tmp_path)
