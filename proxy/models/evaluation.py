"""Retrieval quality on a BEIR-format dataset: what ``embedshift eval`` reports per version.

This compares models in memory, before any data is in place; the promotion gate searches the
real collections instead (``proxy.ingest.quality``). A dataset folder holds
``corpus.jsonl`` ({_id, title, text}), ``queries.jsonl`` ({_id, text}) and ``qrels/test.tsv``
(query-id, corpus-id, score, with a header). Documents are encoded as "title text" (as BEIR and
MTEB do), queries with the version's query prefix; search is exact, by dot product over all
documents (the cosine for the normalised models the catalogue builds), so the figures measure the
model, not an index.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import msgspec
import numpy as np

from proxy.models.encoders import TextModel
from rollout_rules.errors import RuleError

Qrels = dict[str, dict[str, int]]


class Dataset(msgspec.Struct, frozen=True):
    name: str
    doc_ids: list[str]
    docs: list[str]
    query_ids: list[str]
    queries: list[str]
    qrels: Qrels


class Scores(msgspec.Struct, frozen=True, kw_only=True):
    ndcg_at_10: float
    recall_at_10: float
    recall_at_100: float
    mrr_at_10: float
    queries: int
    documents: int


def load_golden(folder: Path, split: str = "test") -> tuple[dict[str, str], Qrels]:
    """A BEIR folder's judged queries and qrels only (the corpus is already in the
    collections): what ``eval --alias`` sends through them."""
    for part in ("queries.jsonl", f"qrels/{split}.tsv"):
        if not (folder / part).is_file():
            raise RuleError("dataset", f"{folder} has no {part} (expected BEIR format)")
    qrels = _read_qrels(folder / "qrels" / f"{split}.tsv")
    queries = {row["_id"]: row["text"] for row in _jsonl(folder / "queries.jsonl")
               if row["_id"] in qrels}
    return queries, qrels


def load_beir(folder: Path, split: str = "test", max_docs: int | None = None) -> Dataset:
    """Read a BEIR folder; ``max_docs`` keeps the judged documents plus the first others."""
    for part in ("corpus.jsonl", "queries.jsonl", f"qrels/{split}.tsv"):
        if not (folder / part).is_file():
            raise RuleError("dataset", f"{folder} has no {part} (expected BEIR format)")
    qrels = _read_qrels(folder / "qrels" / f"{split}.tsv")
    corpus = {row["_id"]: f"{row.get('title', '')} {row['text']}".strip()
              for row in _jsonl(folder / "corpus.jsonl")}
    if max_docs is not None:
        judged = {d for rels in qrels.values() for d in rels}
        others = [d for d in corpus if d not in judged][: max(0, max_docs - len(judged))]
        keep = judged.union(others)
        corpus = {d: text for d, text in corpus.items() if d in keep}
    queries = {row["_id"]: row["text"] for row in _jsonl(folder / "queries.jsonl")
               if row["_id"] in qrels}
    return Dataset(name=folder.name, doc_ids=list(corpus), docs=list(corpus.values()),
                   query_ids=list(queries), queries=list(queries.values()), qrels=qrels)


def evaluate(model: TextModel, dataset: Dataset, query_prefix: str = "",
             batch_size: int = 32) -> Scores:
    return score(rank(model, dataset, query_prefix, batch_size), dataset.qrels,
                 documents=len(dataset.docs))


def rank(model: TextModel, dataset: Dataset, query_prefix: str = "", batch_size: int = 32,
         k: int = 100) -> dict[str, list[str]]:
    """Each judged query's ``k`` best documents by ``model``, best first."""
    doc_vectors = model.embed_many(dataset.docs, batch_size)
    query_vectors = model.embed_many([query_prefix + q for q in dataset.queries], batch_size)
    rankings = top_k(query_vectors, doc_vectors, k)
    return {qid: [dataset.doc_ids[i] for i in row]
            for qid, row in zip(dataset.query_ids, rankings, strict=True)}


def top_k(queries: np.ndarray, docs: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k most similar documents per query, best first (dot product)."""
    similarity = queries @ docs.T
    k = min(k, docs.shape[0])
    best = np.argpartition(-similarity, k - 1, axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(similarity, best, axis=1), axis=1, kind="stable")
    return np.take_along_axis(best, order, axis=1)


def score(ranked: Mapping[str, Sequence[str]], qrels: Qrels, documents: int) -> Scores:
    judged = [q for q in ranked if any(r > 0 for r in qrels.get(q, {}).values())]
    if not judged:
        raise RuleError("dataset", "no query has a relevant document in the qrels")

    def mean(values: Iterable[float]) -> float:
        return float(np.mean(list(values)))

    return Scores(
        ndcg_at_10=mean(ndcg(ranked[q], qrels[q], 10) for q in judged),
        recall_at_10=mean(recall(ranked[q], qrels[q], 10) for q in judged),
        recall_at_100=mean(recall(ranked[q], qrels[q], 100) for q in judged),
        mrr_at_10=mean(mrr(ranked[q], qrels[q], 10) for q in judged),
        queries=len(judged), documents=documents)


def ndcg(ranking: Sequence[str], relevance: Mapping[str, int], k: int) -> float:
    gains = [relevance.get(doc, 0) for doc in ranking[:k]]
    dcg = sum(g / math.log2(i + 2) for i, g in enumerate(gains))
    ideal = sorted((r for r in relevance.values() if r > 0), reverse=True)[:k]
    idcg = sum(g / math.log2(i + 2) for i, g in enumerate(ideal))
    return dcg / idcg if idcg else 0.0


def recall(ranking: Sequence[str], relevance: Mapping[str, int], k: int) -> float:
    relevant = {d for d, r in relevance.items() if r > 0}
    return len(relevant.intersection(ranking[:k])) / len(relevant) if relevant else 0.0


def mrr(ranking: Sequence[str], relevance: Mapping[str, int], k: int) -> float:
    for i, doc in enumerate(ranking[:k]):
        if relevance.get(doc, 0) > 0:
            return 1 / (i + 1)
    return 0.0


def _jsonl(path: Path) -> Iterable[dict[str, str]]:
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if line.strip():
                try:
                    yield json.loads(line)
                except ValueError as exc:
                    raise RuleError("dataset", f"{path}:{number} is not JSON: {exc}") from exc


def _read_qrels(path: Path) -> Qrels:
    qrels: Qrels = {}
    lines = path.read_text(encoding="utf-8").splitlines()
    for number, line in enumerate(lines[1:], 2):
        parts = line.split("\t")
        if len(parts) != 3 or not parts[2].strip().lstrip("-").isdigit():
            raise RuleError("dataset", f"{path}:{number}: expected query-id, corpus-id, score")
        qrels.setdefault(parts[0], {})[parts[1]] = int(parts[2])
    return qrels
