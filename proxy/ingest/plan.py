"""``plan``: what re-encoding the corpus into the candidate will take, measured here first.

The candidate's own model encodes a sample of stable's stored texts on this machine (the thread
count a backfill worker uses, in the backfill's batches) to measure documents/s and tokens per
document (real tokens, by attention mask), and times what a worker pays per batch besides
encoding (reading the batch from stable, recounting coverage); the rest is
arithmetic over the corpus size (``estimate``, pure): wall time at 1..N workers (a worker
encodes on one thread, so workers scale up to the cores and no further), the candidate
collection's size (vectors, payload, index links) and, given a price per thousand tokens, what
an encoding service would charge for the same tokens.

A served candidate (``proxy.models.served``) is measured the same way, through its service: its
tokens are what the service itself counted (``usage``) for the sample; its workers scale to the
calls the backfill may make at once (one fewer than the model's ``max_concurrency``) but no
faster than the sample went with that many calls in flight (measured: a self-hosted server may
not answer faster for being asked twice) nor than its rate limits allow, keeping live queries
their share. A served plan sends the sample twice.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

import msgspec

from proxy.ingest.backfill import Options
from proxy.ingest.documents import DOC_ID_FIELD, TEXT_FIELD, document_of
from proxy.ingest.writer import Ingestor, encode
from proxy.models.encoders import RemoteModel, TextModel
from rollout_rules.errors import RuleError
from rollout_rules.model import Rollout

HNSW_LINK_BYTES = 16 * 2 * 4  # m=16 links at layer 0, both ways, 4-byte ids
ENVELOPE_BYTES = 160  # the envelope's JSON beside the source text
BATCH = Options().batch_size  # the backfill's default batch


class Workers(msgspec.Struct, frozen=True):
    workers: int
    seconds: float


class Plan(msgspec.Struct, frozen=True, kw_only=True):
    alias: str
    candidate: str
    model: str
    documents: int  # stable holds
    to_encode: int  # the candidate lacks
    sampled: int
    docs_per_s: float  # one worker, measured here
    tokens_per_doc: float
    tokens_counted_by: str  # "tokenizer" (a local model) or "service" (its usage figures)
    tokens: int  # to encode
    cores: int
    parallel: int  # workers that run at once: the cores, or a served model's bulk calls
    together_docs_per_s: float | None  # a served model: measured with ``parallel`` calls at once
    rate_limit_docs_per_s: float | None  # a served model's rpm/tpm, as documents per second
    wall_time: list[Workers]
    storage_bytes: int  # the candidate's collection, whole
    price_per_1k_tokens: float | None
    cost: float | None
    creates: dict[str, Any] | None = None  # a Qdrant server's create request for the
    # candidate's collection (stable's settings), while it is not there


def estimate(*, documents: int, to_encode: int, docs_per_s: float, tokens_per_doc: float,
             text_bytes_per_doc: float, dimensions: int, cores: int, max_workers: int,
             price_per_1k: float | None, batch_overhead_s: float = 0.0,
             batch_size: int = BATCH, ceiling_docs_per_s: float | None = None
             ) -> dict[str, object]:
    """The arithmetic of a plan (pure): each worker encodes at ``docs_per_s`` and pays
    ``batch_overhead_s`` per batch (reading the batch, recounting coverage), in parallel up
    to ``cores`` (the calls a served model may take at once), and never faster than
    ``ceiling_docs_per_s`` (a served model's rate limits)."""
    tokens = round(to_encode * tokens_per_doc)
    per_point = dimensions * 4 + text_bytes_per_doc + ENVELOPE_BYTES + HNSW_LINK_BYTES
    one_worker = to_encode / docs_per_s + -(-to_encode // batch_size) * batch_overhead_s \
        if docs_per_s > 0 else 0.0
    floor = to_encode / ceiling_docs_per_s if ceiling_docs_per_s else 0.0
    return {
        "tokens": tokens,
        "wall_time": [Workers(w, round(max(floor, one_worker / min(w, cores)), 1))
                      for w in range(1, max_workers + 1)] if docs_per_s > 0 else [],
        "storage_bytes": round(documents * per_point),
        "cost": None if price_per_1k is None else round(tokens / 1000 * price_per_1k, 2),
    }


def _plain(value: Any) -> Any:
    """A create request as JSON (the engine's request models as their set fields)."""
    if hasattr(value, "model_dump"):
        return value.model_dump(mode="json", exclude_none=True)
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    return value


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


async def _together(model: TextModel, texts: list[str], parallel: int) -> float:
    """Documents/s with ``parallel`` batches in flight at once: a service's calls do not
    always add up (a server on one machine's CPU answers no faster for being asked twice)."""
    batches = [texts[start:start + BATCH] for start in range(0, len(texts), BATCH)]
    gate = asyncio.Semaphore(parallel)

    async def one(batch: list[str]) -> None:
        async with gate:
            await encode(model, batch)
    began = time.perf_counter()
    await asyncio.gather(*(one(batch) for batch in batches))
    return len(texts) / (time.perf_counter() - began)


async def plan(ingestor: Ingestor, rollout: Rollout, sample: int = 200, max_workers: int = 4,
               price_per_1k: float | None = None, *, corpus: int | None = None) -> Plan:
    """``corpus``: price and time a corpus of that many documents like the sample (the
    collection you will have, measured on the one you have)."""
    if rollout.candidate is None:
        raise RuleError("candidate", f"{rollout.alias} has no candidate to plan for")
    if not 10 <= sample <= 5000:
        raise RuleError("sample", "from 10 to 5000 documents")
    if not 1 <= max_workers <= 64:
        raise RuleError("max_workers", "from 1 to 64")
    store = ingestor.store
    stable, candidate = rollout.version(rollout.stable), rollout.version(rollout.candidate)
    documents = await store.count(stable.target) if await store.describe(stable.target) else 0
    have = (await store.count(candidate.target)
            if await store.describe(candidate.target) else 0)
    page, _ = (await store.scroll(stable.target, None, sample, [TEXT_FIELD, DOC_ID_FIELD])
               if documents else ([], None))
    texts = [d.text for d in (document_of(p.payload) for p in page) if d is not None]
    if not texts:
        raise RuleError("documents", f"{stable.name} holds no documents with source text to "
                                     "measure (ingest some first)")
    model = await ingestor.models.get(candidate)
    served = model if isinstance(model, RemoteModel) else None
    counted = served.figures()["tokens"] if served else 0.0
    await encode(model, texts[:8])  # warm
    began = time.perf_counter()
    for start in range(0, len(texts), BATCH):  # in the backfill's batches, as it encodes
        await encode(model, texts[start:start + BATCH])
    docs_per_s = len(texts) / (time.perf_counter() - began)
    began = time.perf_counter()  # what a worker pays per batch besides encoding
    await store.retrieve(stable.target, [p.id for p in page[:BATCH]])
    await ingestor.accounting.count(rollout)
    overhead = time.perf_counter() - began
    cores = os.cpu_count() or 1
    parallel, together, limit = cores, None, None
    if served is not None:  # what the service counted for the sample (warm-up included)
        tokens_per_doc = (served.figures()["tokens"] - counted) / (len(texts) + len(texts[:8]))
        parallel, limit = served.bulk_capacity(tokens_per_doc)
        together = await _together(model, texts, parallel)
    else:
        tokens_per_doc = sum(model.count_tokens(texts)) / len(texts)
    text_bytes = sum(len(t.encode()) for t in texts) / len(texts)
    creates = None
    if not await store.describe(candidate.target):
        others = [v for v in rollout.versions if v.name != candidate.name]
        creates = _plain(await store.creation(candidate.target, candidate, others,
                                              stable.target, rollout.carried)) or None
    if corpus is not None:
        documents, have = corpus, 0
    figures = estimate(documents=documents, to_encode=max(0, documents - have),
                       docs_per_s=docs_per_s, tokens_per_doc=tokens_per_doc,
                       text_bytes_per_doc=text_bytes, dimensions=candidate.dimensions,
                       cores=parallel, max_workers=max_workers, price_per_1k=price_per_1k,
                       batch_overhead_s=overhead,
                       ceiling_docs_per_s=min((x for x in (together, limit) if x), default=None))
    return Plan(alias=rollout.alias, candidate=candidate.name, model=candidate.model,
                documents=documents, to_encode=max(0, documents - have), sampled=len(texts),
                docs_per_s=round(docs_per_s, 1), tokens_per_doc=round(tokens_per_doc, 1),
                tokens_counted_by="service" if served else "tokenizer", cores=cores,
                parallel=parallel, together_docs_per_s=_rounded(together),
                rate_limit_docs_per_s=_rounded(limit),
                price_per_1k_tokens=price_per_1k, creates=creates,
                **figures)  # type: ignore[arg-type]
