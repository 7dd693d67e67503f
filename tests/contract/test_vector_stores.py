"""The in-memory fake and Qdrant's embedded engine store, search, filter and describe alike."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from qdrant_client import models

from proxy.vectors.base import (
    RESERVED,
    UNRECORDED_MODEL,
    Fusion,
    Nearest,
    PointIn,
    Sparse,
    Stage,
    VectorsConfig,
    VectorStore,
    mismatches,
    parse_filter,
)
from proxy.vectors.edge import EdgeStore
from proxy.vectors.memory import MemoryStore
from rollout_rules.errors import BackendError, RuleError
from rollout_rules.model import Target, Version


def _version(name: str, target: Target, metric: str = "cosine") -> Version:
    return Version(name=name, model=f"org/{name}", dimensions=8, target=target,
                   metric=metric)  # type: ignore[arg-type]


@pytest.fixture(params=["memory", "edge"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[VectorStore]:
    adapter: VectorStore = (MemoryStore() if request.param == "memory"
                            else EdgeStore(tmp_path / "qdrant"))
    yield adapter
    await adapter.close()


async def test_versions_sharing_a_collection_see_only_their_points(store: VectorStore) -> None:
    """Two versions in one collection, told apart by payload and using a named vector each:
    the layouts the rule model allows must search as declared."""
    rng = np.random.default_rng(7)
    vectors = rng.standard_normal((20, 8)).astype(np.float32)
    v1 = _version("v1", Target(collection="shared", vector_name="dense",
                               payload_match={"model_version": "v1"}))
    v2 = _version("v2", Target(collection="shared", vector_name="dense",
                               payload_match={"model_version": "v2"}))
    await store.ensure_collection(v1.target, v1)
    envelope = {RESERVED: {"text": "the source text"}}
    await store.upsert(v1.target, [PointIn(i, vectors[i].tolist(), {"n": i, **envelope})
                                   for i in range(10)])
    await store.upsert(v2.target, [PointIn(i, vectors[i].tolist(), {"n": i})
                                   for i in range(10, 20)])
    hits = await store.search(v1.target, vectors[3], 5, None, with_payload=True)
    assert hits[0].id == 3 and hits[0].score == pytest.approx(1.0, abs=1e-5)
    assert all(h.payload is not None and h.payload["model_version"] == "v1" for h in hits)
    assert hits[0].payload == {"n": 3, "model_version": "v1"}  # the envelope stays behind
    hits = await store.search(v2.target, vectors[3], 20, None, with_payload=False)
    assert {h.id for h in hits} <= set(range(10, 20)) and hits[0].payload is None
    in_range = parse_filter({"must": [{"key": "n", "range": {"gte": 12, "lt": 15}}]})
    hits = await store.search(v2.target, vectors[13], 10, in_range, with_payload=True)
    assert sorted(h.id for h in hits) == [12, 13, 14]


async def test_hits_speak_the_id_the_document_was_written_with(
        store: VectorStore, monkeypatch: pytest.MonkeyPatch) -> None:
    """A hit's id is the document id from the envelope (a string id, or an integer id whose
    point id is a UUID in a shared collection), with payload or without; the engine sends
    nothing else of the envelope (what reaches ``hit`` is recorded), a point without one keeps
    its point id."""
    import proxy.vectors.edge
    import proxy.vectors.server
    from proxy.vectors.base import hit

    sent: list[dict[str, Any]] = []

    def recording(point: object, with_payload: bool) -> object:
        sent.append(dict(getattr(point, "payload", None) or {}))
        return hit(point, with_payload)

    monkeypatch.setattr(proxy.vectors.edge, "hit", recording)
    monkeypatch.setattr(proxy.vectors.server, "hit", recording)
    vectors = np.eye(8, dtype=np.float32)
    version = _version("v1", Target(collection="ids"))
    await store.ensure_collection(version.target, version)
    ids = ["9e2b3c1a-0000-5000-8000-000000000001", "9e2b3c1a-0000-5000-8000-000000000002"]
    own = {"text": "secret source text", "model": "org/v1", "version": "v1"}
    await store.upsert(version.target, [
        PointIn(ids[0], vectors[0].tolist(), {"n": 0, RESERVED: {**own, "doc_id": "eboard"}}),
        PointIn(ids[1], vectors[1].tolist(), {"n": 1, RESERVED: {**own, "doc_id": 7}}),
        PointIn(5, vectors[2].tolist(), {"n": 2})])
    for with_payload in (True, False):
        hits = await store.search(version.target, vectors[0] + vectors[1] * 0.5 + vectors[2] *
                                  0.25, 3, None, with_payload=with_payload)
        assert [h.id for h in hits] == ["eboard", 7, 5]
        payloads = [h.payload for h in hits]
        assert payloads == ([{"n": 0}, {"n": 1}, {"n": 2}] if with_payload else [None] * 3)
    assert all(set(p.get(RESERVED, {})) <= {"doc_id"} for p in sent), sent
    assert not any("secret" in repr(p) for p in sent)


@pytest.mark.parametrize("key", ["_embedshift.text", "_embedshift", '"_embedshift".doc_id',
                                 "_embedshift[].model", " _embedshift.text"])
async def test_no_filter_may_read_embedshifts_own_fields(store: VectorStore, key: str) -> None:
    """The source text is never in an answer, so no filter may test it either: refused at
    the store's boundary, whoever built the filter (nested, negated, in should)."""
    from qdrant_client import models

    version = _version("v1", Target(collection="secret"))
    await store.ensure_collection(version.target, version)
    await store.upsert(version.target, [PointIn(1, [1.0] * 8, {RESERVED: {
        "text": "confidential: the merger with ACME", "doc_id": "memo"}})])
    condition = models.FieldCondition(key=key, match=models.MatchText(text="ACME"))
    for query_filter in (models.Filter(must=[condition]),
                         models.Filter(should=[models.Filter(must_not=[condition])]),
                         models.Filter(must=[models.IsEmptyCondition(
                             is_empty=models.PayloadField(key=key))])):
        with pytest.raises(RuleError, match="cannot be filtered on"):
            await store.search(version.target, [1.0] * 8, 5, query_filter, with_payload=True)


async def test_describe_reports_what_a_version_is_checked_against(store: VectorStore) -> None:
    version = _version("v1", Target(collection="plain"))
    assert await store.describe(version.target) is None
    await store.ensure_collection(version.target, version)
    await store.upsert(version.target, [PointIn(1, [0.1] * 8)])
    info = await store.describe(version.target)
    assert info is not None
    assert (info.dimensions, info.metric, info.model_id, info.points) == (8, "cosine", "org/v1", 1)
    assert mismatches(version, info) == []
    wrong = _version("v1", Target(collection="plain"), metric="dot")
    assert mismatches(wrong, info) == ["distance: version v1 wants dot, collection plain uses "
                                       "cosine"]


async def test_collections_lists_what_was_created_and_an_unrecorded_model_is_no_mismatch(
        store: VectorStore) -> None:
    assert await store.collections() == []
    plain = Version(name="plain", model=UNRECORDED_MODEL, dimensions=8,
                    target=Target(collection="theirs"))
    await store.ensure_collection(plain.target, plain)
    await store.ensure_collection(Target(collection="ours"), _version("v1", Target("ours")))
    assert await store.collections() == ["ours", "theirs"]
    info = await store.describe(plain.target)
    assert info is not None
    adopted = _version("v1", Target(collection="theirs"))  # a model is named for it later
    assert mismatches(adopted, info) == []
    await store.drop(plain.target)
    assert await store.collections() == ["ours"]


async def _shared_pair(store: VectorStore, count: int,
                       payload: Callable[[int], dict[str, Any]]) -> tuple[Version, Version]:
    """v1 and v2 in one collection, told apart by payload, with ``count`` points each (ids from
    0 and from 10), point ``i`` carrying ``payload(i)``."""
    v1 = _version("v1", Target(collection="shared", payload_match={"model_version": "v1"}))
    v2 = _version("v2", Target(collection="shared", payload_match={"model_version": "v2"}))
    await store.ensure_collection(v1.target, v1, [v2])
    for version, first in ((v1, 0), (v2, 10)):
        await store.upsert(version.target, [
            PointIn(i, [float(i + 1)] * 8, {**payload(i), "model_version": version.name})
            for i in range(first, first + count)])
    return v1, v2


async def test_count_scroll_and_delete_by_filter_keep_to_the_versions_own_points(
        store: VectorStore) -> None:
    v1, v2 = await _shared_pair(store, 6, lambda i: {"kind": "odd" if i % 2 else "even"})
    odd = parse_filter({"must": [{"key": "kind", "match": {"value": "odd"}}]})
    assert odd is not None
    assert await store.count(v1.target, odd) == 3 and await store.count(v1.target) == 6
    page, _ = await store.scroll(v1.target, None, 10, query_filter=odd)
    assert sorted(p.id for p in page) == [1, 3, 5]
    await store.delete_where(v1.target, odd)
    assert await store.count(v1.target) == 3 and await store.count(v2.target, odd) == 3
    reserved = models.Filter(must=[models.FieldCondition(  # built past parse_filter's check
        key=f"{RESERVED}.text", match=models.MatchText(text="x"))])
    with pytest.raises(RuleError, match="cannot be filtered on"):
        await store.count(v1.target, reserved)  # the store refuses it too
    with pytest.raises(RuleError, match="cannot be filtered on"):
        await store.delete_where(v1.target, reserved)


async def test_payload_keys_are_set_and_removed_by_id_or_filter_in_the_version_alone(
        store: VectorStore) -> None:
    v1, v2 = await _shared_pair(store, 3, lambda i: {"kind": "a", "keep": i})
    await store.set_payload(v1.target, {"tag": "x"}, ids=[0, 1])
    kind_a = parse_filter({"must": [{"key": "kind", "match": {"value": "a"}}]})
    await store.set_payload(v1.target, {"kind": "b"}, query_filter=kind_a)
    await store.delete_payload(v1.target, ["keep"], ids=[1])
    payloads = {p.id: p.payload for p in await store.retrieve(v1.target, [0, 1, 2])}
    assert payloads == {
        0: {"kind": "b", "keep": 0, "tag": "x", "model_version": "v1"},
        1: {"kind": "b", "tag": "x", "model_version": "v1"},
        2: {"kind": "b", "keep": 2, "model_version": "v1"}}
    others = await store.retrieve(v2.target, [10, 11, 12])  # the other version untouched
    assert all(p.payload["kind"] == "a" and "tag" not in p.payload for p in others)


def test_a_filter_that_is_not_a_qdrant_filter_is_refused() -> None:
    with pytest.raises(RuleError) as caught:
        parse_filter({"must": [{"key": "a", "match": {"value": {"nested": 1}}}]})
    assert caught.value.field.startswith("filter.must.0")
    assert parse_filter(None) is None


async def test_writing_a_point_again_replaces_it(store: VectorStore) -> None:
    version = _version("v1", Target(collection="again"))
    await store.ensure_collection(version.target, version)
    await store.ensure_collection(version.target, version)  # a second call changes nothing
    await store.upsert(version.target, [PointIn(7, [1.0] + [0.0] * 7, {"rev": 1})])
    await store.upsert(version.target, [PointIn(7, [0.0, 1.0] + [0.0] * 6, {"rev": 2})])
    await store.optimize(version.target)
    info = await store.describe(version.target)
    assert info is not None and info.points == 1
    hits = await store.search(version.target, [0.0, 1.0] + [0.0] * 6, 5, None, True)
    assert [(h.id, h.payload) for h in hits] == [(7, {"rev": 2})]
    assert hits[0].score == pytest.approx(1.0, abs=1e-5)


async def test_a_missing_collection_is_a_backend_error_naming_it(store: VectorStore) -> None:
    target = Target(collection="never_created")
    with pytest.raises(BackendError, match="never_created"):
        await store.search(target, [0.1] * 8, 3, None, True)
    with pytest.raises(BackendError, match="never_created"):
        await store.upsert(target, [PointIn(1, [0.1] * 8)])


async def test_points_read_back_page_by_page_counted_and_deleted(store: VectorStore) -> None:
    """What ingestion and the backfill need: scroll a version's points (its own only, in a
    shared collection), pick payload keys, retrieve by id, count, delete."""
    v1 = _version("v1", Target(collection="both", payload_match={"mv": "v1"}))
    v2 = _version("v2", Target(collection="both", payload_match={"mv": "v2"}))
    await store.ensure_collection(v1.target, v1)
    await store.upsert(v1.target, [PointIn(i, [0.1 * i + 0.1] * 8, {"n": i, "doc": {"t": "x"}})
                                   for i in range(25)])
    await store.upsert(v2.target, [PointIn(100 + i, [0.2] * 8, {"n": i}) for i in range(5)])
    seen, offset, pages = [], None, 0
    while True:
        page, offset = await store.scroll(v1.target, offset, 10, fields=["n"])
        seen += page
        pages += 1
        if offset is None:
            break
    assert [p.id for p in seen] == list(range(25)) and pages == 3
    assert all(p.payload == {"n": p.id} for p in seen)
    assert await store.count(v1.target) == 25 and await store.count(v2.target) == 5
    got = await store.retrieve(v1.target, [3, 999, 4], fields=["doc.t"])
    assert sorted((p.id, p.payload["doc"]["t"]) for p in got) == [(3, "x"), (4, "x")]
    whole = await store.retrieve(v1.target, [5])
    assert whole[0].payload == {"n": 5, "doc": {"t": "x"}, "mv": "v1"}
    assert whole[0].vector is None
    [with_vector] = await store.retrieve(v1.target, [5], [], vectors=True)
    assert with_vector.vector is not None and len(with_vector.vector) == 8
    assert np.allclose(with_vector.vector, [8 ** -0.5] * 8, atol=1e-5)  # cosine: normalised
    await store.delete(v1.target, [3, 4])
    assert await store.count(v1.target) == 23
    assert await store.retrieve(v1.target, [3, 4]) == []
    page, _ = await store.scroll(v2.target, None, 2, [], vectors=True)
    assert [len(p.vector or []) for p in page] == [8, 8]
    await store.drop(v1.target)
    assert await store.describe(v1.target) is None
    await store.drop(v1.target)  # dropping what is gone is nothing


async def test_writers_creating_one_collection_at_once_create_it_once(
        store: VectorStore) -> None:
    """Two backfill workers' first batches arrive together: one collection, every point kept."""
    version = _version("v2", Target(collection="raced"))
    await asyncio.gather(*(store.ensure_collection(version.target, version) for _ in range(8)))
    await asyncio.gather(*(store.upsert(version.target, [PointIn(i, [0.1 * (i + 1)] * 8)])
                           for i in range(8)))
    assert await store.count(version.target) == 8


HYBRID = VectorsConfig(dense={"text-dense": (8, "cosine")},
                       sparse={"text-sparse": None, "bm25": "idf"})


def _hybrid_points(n: int) -> list[PointIn]:
    rng = np.random.default_rng(7)
    points = []
    for i in range(n):
        words = sorted(int(w) for w in rng.choice(40, size=5, replace=False))
        weights = [round(float(x), 3) for x in rng.uniform(0.1, 1.0, size=5)]  # no ties
        points.append(PointIn(i, [], {"n": i % 3}, named={
            "text-dense": [float(x) for x in rng.normal(size=8)],
            "text-sparse": Sparse(words, weights),
            "bm25": Sparse(words[:3], weights[:3])}))
    return points


def _stages(rng: np.random.Generator) -> list[Stage]:
    dense = Nearest("text-dense", [float(x) for x in rng.normal(size=8)])
    sparse = Nearest("text-sparse", Sparse([1, 5, 9, 13], [1.0, 1.0, 0.5, 0.5]))
    idf = Nearest("bm25", Sparse([2, 5, 30], [1.0, 1.0, 1.0]))
    odd = models.Filter(must_not=[models.FieldCondition(key="n", match=models.MatchValue(
        value=1))])
    return [
        Stage(dense, 5), Stage(sparse, 5), Stage(idf, 5),
        Stage(Fusion("rrf"), 6, (Stage(dense, 10), Stage(sparse, 10))),
        Stage(Fusion("rrf", 60, [1.0, 3.0]), 6, (Stage(sparse, 10), Stage(dense, 10))),
        Stage(Fusion("dbsf"), 6, (Stage(dense, 10), Stage(idf, 10)), filter=odd),
        Stage(dense, 4, (Stage(Fusion("rrf"), 20, (Stage(dense, 20), Stage(sparse, 20))),)),
    ]


async def test_hybrid_collections_answer_staged_queries_alike_on_both_engines(
        tmp_path: Path) -> None:
    target = Target(collection="hybrid")
    answers = []
    for adapter in (MemoryStore(), EdgeStore(tmp_path / "qdrant")):
        await adapter.create(target, HYBRID)
        await adapter.upsert(target, _hybrid_points(60))
        info = await adapter.describe(target)
        assert info is not None and info.config == HYBRID and info.points == 60
        [back] = await adapter.retrieve(target, [3], vectors=True)
        assert back.named is not None and set(back.named) == {"text-dense", "text-sparse", "bm25"}
        written = _hybrid_points(4)[3].named["bm25"]
        assert isinstance(written, Sparse)
        assert back.named["bm25"]["indices"] == written.indices
        assert back.named["bm25"]["values"] == pytest.approx(written.values)
        answers.append([[(h.id, round(h.score, 4)) for h in await adapter.query(
            target, stage, with_payload=False)] for stage in _stages(np.random.default_rng(1))])
        await adapter.close()
    memory, edge = answers
    for stage, (ours, theirs) in enumerate(zip(memory, edge, strict=True)):
        assert ours, stage  # every stage finds something: an empty answer proves nothing
        assert [s for _, s in ours] == pytest.approx([s for _, s in theirs], abs=1e-3), stage
        assert _ranked(ours) == _ranked(theirs), (stage, ours, theirs)


def _ranked(hits: list[tuple[Any, float]]) -> list[set[Any]]:
    """The ids score by score, best first: engines order equal scores as they please, and the
    last score's group may be cut anywhere, so it is left out."""
    groups: dict[float, set[Any]] = {}
    for point, score in hits:
        groups.setdefault(round(score, 3), set()).add(point)
    return [groups[score] for score in sorted(groups, reverse=True)][:-1]


async def test_an_unnamed_vector_stays_unnamed_and_a_map_stays_a_map(store: VectorStore) -> None:
    single = VectorsConfig(dense={"": (8, "dot")}, single=True)
    keyed = VectorsConfig(dense={"": (8, "cosine")}, sparse={"langchain-sparse": None})
    for name, config in (("single", single), ("keyed", keyed)):
        await store.create(Target(collection=name), config)
        info = await store.describe(Target(collection=name))
        assert info is not None and info.config == config and info.dimensions == 8


async def test_a_version_declared_later_adds_its_vector_in_place_and_can_drop_it(
        store: VectorStore) -> None:
    first = _version("v1", Target(collection="shared", vector_name="a", payload_match={"v": "1"}))
    later = _version("v2", Target(collection="shared", vector_name="b", payload_match={"v": "2"}))
    await store.ensure_collection(first.target, first)
    await store.upsert(first.target, [PointIn(1, [0.1] * 8, {})])
    missing = await store.describe(later.target)
    assert missing is not None and missing.missing is not None and "'b' yet" in missing.missing
    await store.ensure_collection(later.target, later)  # the first write's: added in place
    await store.upsert(later.target, [PointIn(2, [0.2] * 8, {})])
    info = await store.describe(later.target)
    assert info is not None and info.missing is None and info.config is not None
    assert set(info.config.dense) == {"a", "b"}
    assert [h.id for h in await store.search(later.target, [0.2] * 8, 5, None, False)] == [2]
    wrong = _version("v3", Target(collection="shared", vector_name="a",
                                  payload_match={"v": "3"}), metric="dot")
    with pytest.raises(BackendError, match="8-d cosine"):
        await store.ensure_collection(wrong.target, wrong)
    await store.drop_vector(first.target)
    info = await store.describe(later.target)
    assert info is not None and info.config is not None and set(info.config.dense) == {"b"}
    assert await store.count(later.target) == 1


async def test_a_payload_path_the_engine_cannot_read_is_a_backend_refusal_never_a_crash(
        store: VectorStore) -> None:
    """Whatever reaches a store unchecked, the engine's refusal of it is a BackendError (an
    answer the edges know), not the engine's own exception."""
    target = Target(collection="paths")
    await store.create(target, VectorsConfig(dense={"": (4, "cosine")}))
    for change in (store.index_field(target, "a b", "keyword"),
                   store.delete_payload(target, ["a b"], ids=[1])):
        with contextlib.suppress(BackendError):  # the engine refused it (local mode takes it)
            await change
