"""The backfill: re-encode into the candidate every document stable holds and it lacks, most
answered first, by N workers sharing one Redis work queue, at a rate that spares live queries.

Planning reads stable's and the candidate's document ids from the store (the source text stays
in stable's payload), orders what is missing by answer hits (the proxy's popularity record), and
queues it in batches (``proxy.state.jobs``). A plan already in Redis is resumed, never redone.
Each worker claims a batch under a lease, reads its documents from stable, encodes them with the
candidate's model, writes them, and only then counts the batch done; coverage is recounted from
the store after every batch and announced, so every proxy's gate follows the backfill at once.
Documents ingested meanwhile are dual-written and need no backfill.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any

import msgspec
import structlog

from proxy.ingest.coverage import Coverage
from proxy.ingest.documents import (
    DOC_ID_FIELD,
    PointId,
    doc_id_of,
    document_of,
    point_id,
)
from proxy.ingest.writer import Ingestor
from proxy.models.encoders import RemoteModel
from proxy.state.jobs import BackfillQueue, Claim, JobStatus
from proxy.tasks import cancel_and_wait
from proxy.vectors.base import RESERVED, carried_of, id_of_key, scroll_all
from rollout_rules.errors import BackendError, ModelError, RuleError, StoreUnavailable
from rollout_rules.model import Rollout, Version

log = structlog.get_logger("embedshift.backfill")
DEFAULT_RATE: float | None = None
"""Documents/s when a backfill names no rate: none. A worker encodes on one thread (the shared
model's), which leaves the other cores to queries: on 2 cores, live p99 during a 1-worker
backfill was 1.12x of none at 40 queries/s (``loadtest/bench_backfill.py``). Give ``--rate``
to go gentler, ``--workers`` to go faster."""
QueueFactory = Callable[[str, str], BackfillQueue]
GIVE_UP_AFTER = 5
"""Batches failing in a row (waiting 1, 2, 4, 8 s between them) after which a worker ends the
job as failed, with the error, rather than retrying for ever: a failure that outlasts that is
the rule's or the engine's to fix, and ``backfill`` again resumes."""
RECOUNT_SPACING = 20.0  # a coverage recount waits 20x what the last took: <= ~5% of the time


class Options(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """How a backfill runs (the body of ``POST /admin/aliases/{alias}/backfill``)."""

    workers: int = msgspec.field(default=1)
    rate: float | None = DEFAULT_RATE  # documents/s across this process's workers; None: all
    batch_size: int = 64
    lease_s: float = 30.0

    def check(self) -> Options:
        if not 1 <= self.workers <= 64:
            raise RuleError("workers", "from 1 to 64")
        if self.rate is not None and not self.rate > 0:
            raise RuleError("rate", "documents per second, more than 0 (omit it for no limit)")
        if not 1 <= self.batch_size <= 1024:
            raise RuleError("batch_size", "from 1 to 1024")
        if not 1 <= self.lease_s <= 3600:
            raise RuleError("lease_s", "from 1 to 3600 seconds")
        return self


class Progress(msgspec.Struct, frozen=True, kw_only=True):
    """What ``embedshift backfill --status`` shows."""

    alias: str
    version: str | None
    state: str  # none, running, stopped, failed (job.failed says why), done
    job: JobStatus | None
    running_here: int  # workers of this process on it
    rate_docs_s: float | None
    eta_s: float | None
    skipped: int  # stable points without source text (cannot be re-encoded)
    coverage: list[Coverage]
    predicted_s: float | None = None  # what the last `plan` said this job would take
    took_s: float | None = None  # what it took, start of the job to its last batch
    tokens_spent: int | None = None  # a served candidate: what its service counted for this
    cost: float | None = None        # process's workers since they started, priced as planned


class RateLimit:
    """Documents per second shared by the workers of one process (None: unlimited)."""

    def __init__(self, rate: float | None) -> None:
        self.rate = rate
        self._next = time.monotonic()

    async def take(self, documents: int) -> None:
        if self.rate is None:
            return
        now = time.monotonic()
        start = max(now, self._next)
        self._next = start + documents / self.rate
        if start > now:
            await asyncio.sleep(start - now)


async def missing_ids(ingestor: Ingestor, stable: Version, candidate: Version
                      ) -> list[PointId]:
    """Stable's point ids whose document the candidate lacks, in id order."""
    store = ingestor.store
    have = set()
    if await store.describe(candidate.target) is not None:
        have = {doc_id_of(p) async for p in scroll_all(store, candidate.target, [DOC_ID_FIELD])}
    return [p.id async for p in scroll_all(store, stable.target, [DOC_ID_FIELD])
            if doc_id_of(p) not in have]


def by_popularity(ids: Sequence[PointId], popular: Sequence[tuple[str, float]],
                  stable: Version) -> list[PointId]:
    """Stable's point ``ids`` with the most-answered documents first (in popularity order),
    the rest in their order."""
    wanted = set(ids)
    documents = [id_of_key(key) for key, _ in popular]
    first = [point_id(d, stable) for d in documents if d is not None]
    first = [i for i in first if i in wanted]
    chosen = set(first)
    return first + [i for i in ids if i not in chosen]


def batched(ids: Sequence[PointId], size: int) -> list[list[PointId]]:
    return [list(ids[i:i + size]) for i in range(0, len(ids), size)]


class Backfill:
    """One alias's backfill in this process: plan (or resume), run workers, report."""

    def __init__(self, ingestor: Ingestor, queues: QueueFactory, worker_prefix: str) -> None:
        self.ingestor, self.queues, self.worker_prefix = ingestor, queues, worker_prefix
        self.tasks: dict[str, list[asyncio.Task[None]]] = {}
        self.started: dict[str, tuple[float, int]] = {}  # alias: (monotonic, done_docs then)
        self.tokens_at_start: dict[str, float | None] = {}  # a served candidate's count then
        self._next_recount: dict[str, float] = {}  # alias: monotonic time of the next recount
        self.skipped: dict[str, int] = {}

    async def plan(self, rollout: Rollout, options: Options) -> JobStatus:
        """Queue the missing documents, most answered first, unless a plan is in Redis (a
        finished one is replaced by a fresh plan)."""
        stable, candidate = _pair(rollout)
        queue = self.queues(rollout.alias, candidate.name)
        status = await queue.status()
        if status.exists and not status.finished:
            return status
        if status.exists:
            await queue.clear()
        missing = await missing_ids(self.ingestor, stable, candidate)
        popular = await self.ingestor.rules.most_popular(rollout.alias, max(len(missing), 1))
        ordered = by_popularity(missing, popular, stable)
        await queue.create(batched(ordered, options.batch_size))
        log.info("backfill_planned", alias=rollout.alias, version=candidate.name,
                 documents=len(ordered), popular_first=sum(1 for _ in popular))
        return await queue.status()

    async def start(self, rollout: Rollout, options: Options) -> Progress:
        """Plan or resume, then run ``options.workers`` workers here until the queue is empty;
        one already running here is watched, not started twice (a CLI stopped with Ctrl-C
        and run again finds its backfill going on), unless its job is done."""
        options.check()
        stable, candidate = _pair(rollout)
        if self.running(rollout.alias):
            if not (await self.queues(rollout.alias, candidate.name).status()).finished:
                log.info("backfill_attached", alias=rollout.alias)
                return await self.progress(rollout)
            # the last job is done and its workers are finishing (the final recount): a new
            # start waits for them, then plans what is new, instead of reporting the old job
            await asyncio.gather(*self.tasks.pop(rollout.alias, []), return_exceptions=True)
        status = await self.plan(rollout, options)
        await self.copy_indexes(stable, candidate, rollout)
        await self.queues(rollout.alias, candidate.name).set_started(options.workers)
        await self.ingestor.accounting.update(rollout)
        limit = RateLimit(options.rate)
        self.started[rollout.alias] = (time.monotonic(), status.done_docs)
        self.tokens_at_start[rollout.alias] = await self._tokens(candidate)
        self.skipped[rollout.alias] = 0
        self.tasks[rollout.alias] = [
            asyncio.create_task(self.work(rollout, options, limit, f"{self.worker_prefix}/{n}"),
                                name=f"backfill-{rollout.alias}-{n}")
            for n in range(options.workers)]
        return await self.progress(rollout)

    async def copy_indexes(self, stable: Version, candidate: Version, rollout: Rollout) -> None:
        """The candidate gets stable's payload indexes (an adopted collection's too), so its
        filtered searches are as fast; embedshift's own keys are indexed as it needs them."""
        store = self.ingestor.store
        if await store.describe(stable.target) is None:
            return
        wanted = {field: schema for field, schema in (await store.indexed_fields(
            stable.target)).items() if not field.startswith(RESERVED)}
        if not wanted:
            return
        try:
            await self.ingestor.ensure(candidate, rollout.versions, stable.target,
                                       rollout.carried)
        except BackendError as exc:  # the workers meet it too, and fail the job saying so
            log.warning("indexes_not_copied", alias=rollout.alias, version=candidate.name,
                        error=str(exc))
            return
        have = await store.indexed_fields(candidate.target)
        for field, schema in wanted.items():
            if field not in have:
                await store.index_field(candidate.target, field, schema)
                log.info("index_copied", alias=rollout.alias, field=field, schema=schema,
                         version=candidate.name)

    def running(self, alias: str) -> int:
        return sum(1 for t in self.tasks.get(alias, []) if not t.done())

    async def work(self, rollout: Rollout, options: Options, limit: RateLimit,
                   worker: str) -> None:
        """Claim, encode, write, finish; until the queue is empty. A failed batch is left to
        its lease (another claim retries it); ``GIVE_UP_AFTER`` failures in a row end the job
        as failed. Redis unreachable: wait and retry."""
        stable, candidate = _pair(rollout)
        queue = self.queues(rollout.alias, candidate.name)
        failures = 0
        while True:
            try:
                if failures and (await queue.status()).failed:
                    return  # another worker gave up on the job
                claim = await queue.claim(worker, options.lease_s)
                if claim is None:
                    status = await queue.status()
                    if not status.exists:  # the plan was lost (Redis lost its data): the
                        # collections say what is still missing, so plan again from them
                        log.warning("backfill_replanned", alias=rollout.alias, worker=worker)
                        await self.plan(rollout, options)
                        await queue.set_started(options.workers)
                        continue
                    if status.finished:
                        await queue.set_finished()
                        await self.ingestor.accounting.update(rollout)
                        log.info("backfill_done", alias=rollout.alias, worker=worker)
                        return
                    await asyncio.sleep(min(1.0, options.lease_s / 4))  # others' leases
                    continue
                await limit.take(len(claim.ids))
                written = await self.run_batch(rollout, stable, candidate, claim)
                failures = 0
                if await queue.finish(worker, claim, written):
                    await self.recount(rollout)
                else:
                    log.warning("backfill_lease_lost", alias=rollout.alias, batch=claim.batch)
            except (BackendError, ModelError) as exc:
                failures += 1
                if failures >= GIVE_UP_AFTER:
                    log.error("backfill_failed", alias=rollout.alias, worker=worker,
                              error=str(exc), failures=failures)
                    await queue.set_failed(str(exc))
                    return
                log.warning("backfill_batch_failed", alias=rollout.alias, worker=worker,
                            error=str(exc), retry="after the lease expires")
                await asyncio.sleep(2.0 ** (failures - 1))
            except StoreUnavailable as exc:
                log.warning("backfill_waiting_for_redis", alias=rollout.alias, error=str(exc))
                await asyncio.sleep(1.0)

    async def recount(self, rollout: Rollout) -> None:
        """Coverage recounted after a batch, unless the last recount is too recent for its
        cost: a recount counts whole collections, so it grows with the corpus (0.01 s at
        100,000 documents, 0.1-0.2 s at 1,000,000 on the embedded engine), and after every
        batch it would come to dominate the batches. Each recount waits ``RECOUNT_SPACING``
        times what the last one took, so counting costs at most about 1/20 of the workers' time
        at any size; the gate meanwhile reads a lower figure than the truth (less traffic,
        never more), and the job's end always recounts."""
        if time.monotonic() < self._next_recount.get(rollout.alias, 0.0):
            return
        began = time.monotonic()
        await self.ingestor.accounting.update(rollout)
        took = time.monotonic() - began
        self._next_recount[rollout.alias] = time.monotonic() + RECOUNT_SPACING * took

    async def run_batch(self, rollout: Rollout, stable: Version, candidate: Version,
                        claim: Claim) -> int:
        """Re-encode one batch from stable's stored text into the candidate; how many."""
        points = await self.ingestor.store.retrieve(stable.target, claim.ids,
                                                    vectors=bool(rollout.carried))
        documents = [d for d in (document_of(p.payload, p.id, stable.text_field)
                                 for p in points) if d is not None]
        named = {d.id: carried_of(p, rollout.carried) for d, p in zip(
            (document_of(p.payload, p.id, stable.text_field) for p in points), points,
            strict=True) if d is not None} if rollout.carried else None
        skipped = len(points) - len(documents)
        if skipped:
            self.skipped[rollout.alias] = self.skipped.get(rollout.alias, 0) + skipped
            log.warning("backfill_no_source_text", alias=rollout.alias, points=skipped)
        await self.ingestor.write_version(candidate, documents, rollout.versions,
                                          like=stable.target, carried=rollout.carried,
                                          named=named)
        return len(documents)

    async def stop(self, rollout: Rollout) -> Progress:
        """Stop this process's workers (what they leased returns to the queue when the lease
        expires); the plan stays in Redis, so ``start`` resumes it."""
        await cancel_and_wait(self.tasks.pop(rollout.alias, []))
        if rollout.candidate is not None:
            with contextlib.suppress(StoreUnavailable):
                await self.queues(rollout.alias, rollout.candidate).set_stopped()
        return await self.progress(rollout)

    async def progress(self, rollout: Rollout) -> Progress:
        """Where the job is, with coverage counted but not recorded (a GET writes nothing:
        the workers record coverage after every batch)."""
        coverage = await self.ingestor.accounting.count(rollout) if rollout.candidate else []
        if rollout.candidate is None:
            return Progress(alias=rollout.alias, version=None, state="none", job=None,
                            running_here=0, rate_docs_s=None, eta_s=None, skipped=0,
                            coverage=coverage)
        job = await self.queues(rollout.alias, rollout.candidate).status()
        here = self.running(rollout.alias)
        rate = eta = None
        if rollout.alias in self.started and here:
            since, done_then = self.started[rollout.alias]
            elapsed = time.monotonic() - since
            if elapsed > 0 and job.done_docs > done_then:
                rate = (job.done_docs - done_then) / elapsed
                eta = max(0, job.total_docs - job.done_docs) / rate
        state = ("none" if not job.exists else "failed" if job.failed
                 # done once a worker has stamped it (until then its workers are finishing)
                 else "done" if job.finished and (job.finished_at or not here)
                 else "running" if here or (job.leased and not job.stopped) else "stopped")
        planned = await self.ingestor.rules.report(rollout.alias, rollout.candidate, "plan")
        took = _took(job)
        spent, cost = await self._spent(rollout, planned)
        return Progress(alias=rollout.alias, version=rollout.candidate, state=state, job=job,
                        running_here=here, rate_docs_s=rate, eta_s=eta,
                        skipped=self.skipped.get(rollout.alias, 0), coverage=coverage,
                        predicted_s=predicted_seconds(planned, job), took_s=took,
                        tokens_spent=spent, cost=cost)

    async def _tokens(self, version: Version) -> float | None:
        """What a served model's service has counted in this process (None: a local model, or
        one that does not load: the workers will say why)."""
        try:
            model = await self.ingestor.models.get(version)
        except ModelError:
            return None
        return model.figures()["tokens"] if isinstance(model, RemoteModel) else None

    async def _spent(self, rollout: Rollout, planned: Mapping[str, Any] | None
                     ) -> tuple[int | None, float | None]:
        """Tokens a served candidate's service counted since this process's workers started,
        and their price at the plan's (None where unknown)."""
        before = self.tokens_at_start.get(rollout.alias)
        if before is None or rollout.candidate is None:
            return None, None
        now = await self._tokens(rollout.version(rollout.candidate))
        if now is None:
            return None, None
        spent = int(now - before)
        price = planned.get("price_per_1k_tokens") if planned else None
        return spent, (round(spent / 1000 * price, 4) if isinstance(price, (int, float))
                       else None)

    async def close(self) -> None:
        await cancel_and_wait(t for ts in self.tasks.values() for t in ts)
        self.tasks.clear()


def _took(job: JobStatus) -> float | None:
    """The job's time, start to its last batch, once finished."""
    if not (job.finished_at and job.created_at):
        return None
    return (datetime.fromisoformat(job.finished_at) -
            datetime.fromisoformat(job.created_at)).total_seconds()


def predicted_seconds(plan: Mapping[str, Any] | None, job: JobStatus) -> float | None:
    """A recorded plan's wall time at the job's workers, scaled from the documents it planned
    for to the job's (pure)."""
    if not plan or not job.total_docs or not plan.get("to_encode"):
        return None
    times = {row.get("workers"): row.get("seconds") for row in plan.get("wall_time", [])
             if isinstance(row, dict)}
    seconds = times.get(max(job.workers, 1)) or times.get(1)
    if not isinstance(seconds, (int, float)):
        return None
    return round(seconds * job.total_docs / float(plan["to_encode"]), 1)


def _pair(rollout: Rollout) -> tuple[Version, Version]:
    if rollout.candidate is None:
        raise RuleError("candidate", f"{rollout.alias} has no candidate to backfill")
    return rollout.version(rollout.stable), rollout.version(rollout.candidate)
