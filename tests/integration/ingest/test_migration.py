"""A user's corpus goes from an empty v2 to covered, and the gate follows it.

Dual-write ingestion, the backfill (shared by workers, most-answered first, beside live
ingestion) and the coverage every proxy learns of; on the real redis-server, Qdrant's engine
and the ONNX models."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import msgspec
import pytest
from msgspec.structs import replace

from loadtest.corpus import golden
from proxy.control.operator import Operator
from proxy.ingest.archive import archive, unarchive
from proxy.ingest.backfill import Options
from proxy.ingest.plan import plan
from proxy.ingest.quality import judge
from proxy.ingest.verify import verify
from proxy.state.watcher import RuleWatcher
from proxy.vectors.base import RESERVED, id_key
from rollout_rules.coverage import cap_bp
from rollout_rules.decide import Context, decide
from rollout_rules.errors import RuleError, TransitionError
from rollout_rules.model import STEPPED, CoverageGate
from tests.eventually import eventually_async
from tests.integration.ingest.conftest import Migration, corpus

USERS = 2000
L3, L6 = "sentence-transformers/paraphrase-MiniLM-L3-v2", "sentence-transformers/all-MiniLM-L6-v2"


async def test_ingestion_writes_every_version_with_its_envelope_and_again_changes_nothing(
        migration: Migration) -> None:
    rollout = await migration.declare()
    documents = corpus(1200)
    for start in range(0, len(documents), 200):
        results = await migration.ingestor.write(rollout, documents[start:start + 200])
        assert all(r.written == ["v1", "v2"] and not r.failed for r in results)
    for name, model in (("v1", L3), ("v2", L6)):
        assert sorted(await migration.ids(rollout, name)) == list(range(1200))  # type: ignore[type-var]
        point = (await migration.store.retrieve(rollout.version(name).target, [17]))[0]
        assert point.payload[RESERVED] == {
            "doc_id": 17, "text": documents[17].text, "model": model, "version": name,
            "dimensions": 384, "metric": "cosine", "normalized": True}
        assert point.payload["n"] == 17
    assert await migration.rules.coverage("docs") == {"v1": 1.0, "v2": 1.0}
    before = dict(migration.encoded)
    await migration.ingestor.write(rollout, documents[:200])  # the same file again
    assert await migration.store.count(rollout.version("v2").target) == 1200
    assert migration.encoded[L6] == before[L6] + 200  # re-encoded, replaced, not added


async def test_two_workers_share_the_corpus_and_no_batch_is_done_twice(
        migration: Migration) -> None:
    stable_only = await migration.declare(candidate=False)
    await migration.ingestor.write(stable_only, corpus(1500))
    rollout = await migration.declare()
    assert await migration.rules.coverage("docs") == {"v1": 1.0}  # v2 not counted yet
    backfill = migration.backfill()
    progress = await backfill.start(rollout, Options(workers=2, batch_size=50))
    assert progress.running_here == 2 and progress.job is not None
    await asyncio.wait_for(asyncio.gather(*backfill.tasks["docs"]), 300)
    progress = await backfill.progress(rollout)
    assert progress.state == "done", progress
    assert progress.job is not None and progress.job.done_batches == 30, progress
    assert progress.job.done_docs == 1500, progress
    assert migration.encoded[L6] == 1500, (migration.encoded, progress)  # each exactly once
    assert sorted(await migration.ids(rollout, "v2")) == list(range(1500))  # type: ignore[type-var]
    assert await migration.rules.coverage("docs") == {"v1": 1.0, "v2": 1.0}
    again = await backfill.start(rollout, Options())  # nothing left: a new plan, empty
    await asyncio.wait_for(asyncio.gather(*backfill.tasks["docs"]), 60)
    assert again.job is not None and again.job.total_docs == 0
    assert migration.encoded[L6] == 1500


async def test_documents_ingested_during_a_backfill_reach_both_versions(
        migration: Migration) -> None:
    await migration.ingestor.write(await migration.declare(candidate=False), corpus(1000))
    rollout = await migration.declare()
    backfill = migration.backfill()
    await backfill.start(rollout, Options(workers=1, batch_size=40, rate=400))
    for start in range(1000, 1300, 50):  # new documents, and rewrites of old ones, meanwhile
        await migration.ingestor.write(rollout, corpus(50, start) + corpus(5, start - 900))
        await asyncio.sleep(0.1)
    assert backfill.running("docs") == 1, "the backfill finished before ingestion: too fast"
    await asyncio.wait_for(asyncio.gather(*backfill.tasks["docs"]), 300)
    for name in ("v1", "v2"):
        assert sorted(await migration.ids(rollout, name)) == list(range(1300))  # type: ignore[type-var]
    assert await migration.rules.coverage("docs") == {"v1": 1.0, "v2": 1.0}


async def test_the_most_answered_documents_are_backfilled_first(migration: Migration) -> None:
    await migration.ingestor.write(await migration.declare(candidate=False), corpus(1500))
    popular = list(range(1400, 1500))  # the last in id order: only popularity brings them first
    await migration.rules.record_hits("docs", {str(i): 50 - i % 40 for i in popular})
    await migration.rules.record_hits("docs", {str(i): 1 for i in range(0, 1400, 7)})
    rollout = await migration.declare()
    backfill = migration.backfill()
    await backfill.start(rollout, Options(workers=1, batch_size=50, rate=1500))
    seen: list[tuple[float, float]] = []
    while backfill.running("docs"):
        fractions = await migration.rules.coverage("docs")
        weighted = await migration.rules.coverage("docs", "popularity")
        if 0 < fractions.get("v2", 0) < 1:
            seen.append((fractions["v2"], weighted["v2"]))
        await asyncio.sleep(0.05)
    assert len(seen) >= 3, f"too few readings during the backfill: {seen}"
    assert all(w > p for p, w in seen), seen  # popularity-weighted leads plain throughout
    early = [w for p, w in seen if p <= 0.1]
    assert early and max(early) > 0.9, seen  # a tenth done covers nine tenths of the answers


async def test_every_proxy_learns_of_coverage_at_once_and_the_share_follows_it(
        migration: Migration) -> None:
    """The backfill announces coverage; a watcher (what every proxy serves from) has it within
    half a second, and the share of users its snapshot routes to v2 stays within the gate's cap
    at every step while the backfill runs."""
    await migration.ingestor.write(await migration.declare(candidate=False), corpus(1500))
    rollout = await migration.declare()
    rollout = await migration.rules.write(replace(rollout, percent=100.0), rollout.revision,
                                          "tests", "all in, as far as coverage allows")
    watcher = RuleWatcher(migration.rules, refresh_interval_s=3600)  # notifications only
    await watcher.start()
    shares: list[tuple[float, float]] = []  # (cap %, measured %)

    def measure() -> None:
        snapshot = watcher.rollouts["docs"]
        coverage = watcher.coverage["docs"].get("v2")
        routed = sum(decide(snapshot, Context(user_id=f"user-{n}"), coverage).version == "v2"
                     for n in range(USERS))
        shares.append((cap_bp(snapshot.coverage_gate, coverage) / 100, 100 * routed / USERS))

    written: dict[float, float] = {}  # v2's coverage -> when the backfill's write returned
    seen: dict[float, float] = {}  # -> when the watcher first held it
    original = migration.rules.set_coverage

    async def set_coverage(alias: str, version: str, covered: int, total: int,
                           popular: float | None = None) -> None:
        await original(alias, version, covered, total, popular)
        if version == "v2":
            written.setdefault(min(1.0, covered / total), time.monotonic())

    migration.rules.set_coverage = set_coverage  # type: ignore[method-assign]
    try:
        backfill = migration.backfill()
        await backfill.start(rollout, Options(workers=1, batch_size=100, rate=600))
        while backfill.running("docs") or watcher.coverage["docs"].get("v2") != 1.0:
            held = watcher.coverage.get("docs", {}).get("v2")
            if held is not None and held not in seen:
                seen[held] = time.monotonic()
                measure()
            await asyncio.sleep(0.001)
    finally:
        await watcher.stop()
    seen.setdefault(1.0, time.monotonic())
    lags = [seen[value] - at for value, at in written.items() if value in seen]
    print(f"coverage reached the watcher {1000 * sorted(lags)[len(lags) // 2]:.1f} ms "
          f"(median), {1000 * max(lags):.1f} ms (max) after the write, over {len(lags)} "
          f"updates; (cap, share): {shares}")
    assert len(lags) >= 5 and len(lags) == len(written) and max(lags) < 0.5, (written, seen)
    assert all(cap - 4 <= share <= cap + 4 for cap, share in shares), shares
    caps = [cap for cap, _ in shares]
    assert caps[0] <= 5 and caps[-1] == 100 and caps == sorted(caps), shares


@pytest.mark.parametrize("bad", [{"workers": 0}, {"rate": 0}, {"batch_size": 5000}])
def test_backfill_options_out_of_range_name_the_field(bad: dict[str, float]) -> None:
    from rollout_rules.errors import RuleError
    with pytest.raises(RuleError) as caught:
        Options(**bad).check()  # type: ignore[arg-type]
    assert caught.value.field == next(iter(bad))


async def test_verify_finds_what_is_missing_extra_or_encoded_by_another_model(
        migration: Migration) -> None:
    """And once mended it passes, which is what promote asks for."""
    stable_only = await migration.declare(candidate=False)
    documents = corpus(300)
    await migration.ingestor.write(stable_only, documents)
    rollout = await migration.declare()
    # the stepped gate (full at 95%), so that 97% covered lets verify's verdict speak first
    rollout = await migration.rules.write(replace(rollout, coverage_gate=CoverageGate(
        steps=STEPPED)), rollout.revision, "tests", "stepped gate")
    v2 = rollout.version("v2")
    await migration.ingestor.write_version(v2, documents[:290])
    await migration.ingestor.write_version(v2, corpus(1, 5000))  # only in the candidate
    impostor = replace(v2, model=L3)  # the right shape, the wrong model
    await migration.ingestor.write_version(impostor, [documents[7]])
    report = await verify(migration.ingestor, rollout, sample=400, seed=1)
    assert not report.passed
    assert (report.missing, report.missing_ids) == (10, list(range(290, 300)))
    assert (report.extra, report.extra_ids) == (1, [5000])
    assert report.envelope_mismatches == 1
    assert report.envelope_examples == [f"7: model is {L3!r}, v2 is {L6!r}"]
    assert report.vector_mismatch_ids == [7] and report.sampled == 291
    operator = Operator(migration.rules, "tests")
    await migration.rules.put_report("docs", "v2", "verify", msgspec.to_builtins(report))
    await migration.ingestor.accounting.update(rollout)
    with pytest.raises(TransitionError, match=r"last verify failed \(10 missing, 1 extra, 1 "
                                              r"envelope mismatches, 1 vectors off\)"):
        await operator.promote("docs")

    await migration.ingestor.delete(rollout, 5000)
    await migration.ingestor.write_version(v2, documents[7:8])
    backfill = migration.backfill()
    await backfill.start(rollout, Options())
    await asyncio.wait_for(asyncio.gather(*backfill.tasks["docs"]), 120)
    report = await verify(migration.ingestor, rollout, sample=50, seed=2)
    assert report.passed and report.min_cosine is not None and report.min_cosine >= 0.999
    await migration.rules.put_report("docs", "v2", "verify", msgspec.to_builtins(report))
    promoted = (await operator.promote("docs", "verified")).after
    assert (promoted.stable, promoted.previous_stable) == ("v2", "v1")


async def test_archive_refuses_a_named_version_and_unarchive_brings_it_back_searchable(
        migration: Migration, tmp_path: Path) -> None:
    rollout = await migration.declare()
    documents = corpus(200)
    await migration.ingestor.write(rollout, documents)
    report = await verify(migration.ingestor, rollout, sample=10)
    await migration.rules.put_report("docs", "v2", "verify", msgspec.to_builtins(report))
    promoted = (await Operator(migration.rules, "tests").promote("docs", "verified")).after
    with pytest.raises(RuleError, match=r"still names v1 \(previous_stable\)"):
        await archive(migration.ingestor, promoted, "v1", tmp_path, keep=1)
    retired = (await Operator(migration.rules, "tests").retire("docs", "v2 holds",
                                                              force=True)).after
    v1 = retired.version("v1")
    info = await archive(migration.ingestor, retired, "v1", tmp_path, keep=1)
    assert info.points == 200 and await asyncio.to_thread(os.path.exists, info.file)
    assert await migration.store.describe(v1.target) is None
    back = await unarchive(migration.ingestor, retired, "v1", tmp_path)
    assert back.points == 200 and await migration.store.count(v1.target) == 200
    model = await migration.models.get(v1)
    hits = await migration.store.search(v1.target, model.embed([documents[42].text])[0], 1,
                                        None, True)
    assert hits[0].id == 42 and hits[0].payload == {"n": 42, "group": 2}
    again = await archive(migration.ingestor, retired, "v1", tmp_path, keep=1)
    assert again.removed == [info.file]
    await migration.ingestor.write_version(v1, documents[:3])  # declared again and written to
    assert await migration.store.count(v1.target) == 3
    assert not await asyncio.to_thread(os.path.exists, info.file)


async def test_plan_measures_the_candidate_on_the_corpus_and_counts_what_is_left(
        migration: Migration) -> None:
    documents = corpus(400)
    await migration.ingestor.write(await migration.declare(candidate=False), documents)
    rollout = await migration.declare()
    await migration.ingestor.write_version(rollout.version("v2"), documents[:100])
    found = await plan(migration.ingestor, rollout, sample=50, max_workers=2,
                       price_per_1k=0.1)
    model = await migration.models.get(rollout.version("v2"))
    tokens = model.count_tokens([d.text for d in documents[:50]])
    assert (found.documents, found.to_encode, found.sampled) == (400, 300, 50)
    assert found.tokens_per_doc == round(sum(tokens) / 50, 1) and 10 < found.tokens_per_doc < 40
    assert found.docs_per_s > 0 and found.tokens == round(300 * sum(tokens) / 50)
    assert found.cost == round(found.tokens / 1000 * 0.1, 2)
    assert found.wall_time[0].seconds > 0 and found.storage_bytes > 400 * 384 * 4


async def test_promote_refuses_a_candidate_worse_on_the_golden_set_and_allows_a_good_one(
        migration: Migration) -> None:
    """The golden set is searched through the real collections: a v2 whose points were encoded
    by another model than its queries scores badly there, whatever the model could do."""
    rollout = await migration.declare()
    documents = corpus(300)
    await migration.ingestor.write(rollout, documents)
    queries, qrels = golden(documents)
    operator = Operator(migration.rules, "tests")
    report = await verify(migration.ingestor, rollout, sample=10)
    await migration.rules.put_report("docs", "v2", "verify", msgspec.to_builtins(report))

    good = await judge(migration.ingestor, rollout, queries, qrels)
    assert good.passed and good.queries == 30
    assert good.stable_ndcg_at_10 > 0.5 and good.candidate_ndcg_at_10 > 0.5, good

    impostor = replace(rollout.version("v2"), model=L3)  # v2's points, made by v1's model
    await migration.ingestor.write_version(impostor, documents)
    bad = await judge(migration.ingestor, rollout, queries, qrels)
    assert not bad.passed and bad.candidate_ndcg_at_10 < bad.stable_ndcg_at_10 - 0.1, bad
    await migration.rules.put_report("docs", "v2", "quality",
                                              msgspec.to_builtins(bad))
    with pytest.raises(TransitionError, match="nDCG@10 on the golden set is"):
        await operator.promote("docs")
    await migration.rules.put_report("docs", "v2", "quality",
                                              msgspec.to_builtins(good))
    assert (await operator.promote("docs", "judged")).after.stable == "v2"


async def test_polling_progress_counts_coverage_and_writes_nothing(
        migration: Migration) -> None:
    """A GET of backfill progress reads: it counts the collections for its answer but records
    and announces nothing (the workers and ingestion record coverage as they write)."""
    rollout = await migration.declare()
    documents = corpus(20)
    await migration.ingestor.write_version(rollout.version("v1"), documents)
    await migration.ingestor.accounting.update(rollout)
    announced: list[tuple[str, int | None]] = []
    subscribed = asyncio.Event()

    async def listen() -> None:
        async def ready() -> None:
            subscribed.set()

        async for change in migration.rules.changes(ready):
            announced.append(change)

    listener = asyncio.create_task(listen())
    await asyncio.wait_for(subscribed.wait(), 5)
    for _ in range(5):  # what GET .../backfill does on every poll
        await migration.backfill().progress(rollout)
    await migration.ingestor.write_version(rollout.version("v2"), documents[:5])
    progress = await migration.backfill().progress(rollout)
    await asyncio.sleep(0.2)
    listener.cancel()
    assert announced == []
    assert [(c.version, c.covered, c.total) for c in progress.coverage] == [
        ("v1", 20, 20), ("v2", 5, 20)]
    assert (await migration.rules.coverage("docs"))["v2"] == 0.0  # as last recorded


async def test_by_default_nobody_reaches_a_candidate_missing_what_stable_answers(
        migration: Migration) -> None:
    """Completeness is measured from stable's real answers (their documents, sampled as the
    proxy records them): at 20% backfilled the default gate routes nobody to v2, complete it
    routes everyone the percent gives it."""
    documents = corpus(500)
    await migration.ingestor.write(await migration.declare(candidate=False), documents)
    rollout = await migration.declare()
    rollout = await migration.rules.write(replace(rollout, percent=100.0), rollout.revision,
                                          "tests", "all in, as far as the gate allows")
    stable = rollout.version("v1")
    model = await migration.models.get(stable)
    answered: dict[str, float] = {}
    for d in documents[::5]:  # real queries answered by stable, as the proxy records them
        hits = await migration.store.search(stable.target, model.embed([d.text])[0], 10, None,
                                            False)
        for hit in hits:
            answered[id_key(hit.id)] = answered.get(id_key(hit.id), 0) + 1
    await migration.rules.record_hits("docs", answered)
    await migration.ingestor.write_version(rollout.version("v2"), documents[:100])

    def routed(coverage: float | None) -> int:
        return sum(decide(rollout, Context(user_id=f"user-{n}"), coverage).version == "v2"
                   for n in range(USERS))

    await migration.ingestor.accounting.update(rollout)
    completeness = (await migration.rules.coverage("docs", "completeness"))["v2"]
    assert (await migration.rules.coverage("docs"))["v2"] == 0.2
    assert 0.1 < completeness < 0.5 and routed(completeness) == 0, completeness
    await migration.ingestor.write_version(rollout.version("v2"), documents[100:])
    await migration.ingestor.accounting.update(rollout)
    completeness = (await migration.rules.coverage("docs", "completeness"))["v2"]
    assert completeness >= 0.99 and routed(completeness) == USERS


async def test_a_backfill_whose_plan_is_lost_plans_again_and_a_second_start_watches_it(
        migration: Migration) -> None:
    """Redis loses the job's keys mid-backfill: the workers plan again from the collections
    (what v2 still lacks) and finish; starting again while it runs watches the same job."""
    await migration.ingestor.write(await migration.declare(candidate=False), corpus(600))
    rollout = await migration.declare()
    backfill = migration.backfill()
    await backfill.start(rollout, Options(workers=1, batch_size=50, rate=300))
    queue = migration.rules.backfill_queue("docs", "v2")

    async def under_way() -> bool:
        return (await queue.status()).done_docs >= 100

    await eventually_async(under_way, timeout_s=60)
    again = await backfill.start(rollout, Options(workers=1, batch_size=50, rate=300))
    assert again.state == "running" and backfill.running("docs") == 1
    await migration.rules.client.delete(*queue.keys.values())  # the job's state, lost
    await asyncio.wait_for(asyncio.gather(*backfill.tasks["docs"]), 120)
    assert sorted(await migration.ids(rollout, "v2")) == list(range(600))  # type: ignore[type-var]
    status = await queue.status()
    assert status.finished and status.total_docs < 600  # the new plan: only what was missing
