"""The request path, knowing nothing of HTTP: decide, encode, search, answer, and say why.

    request -> rules snapshot (memory) -> decide() -> encoder[version] -> store.search(target)
            -> hits + model_version + rollout{bucket, reason, revision, effective_percent}

If the candidate's encoder or store fails, the same query is answered from stable with reason
``fallback``: the user never pays for the candidate's failure. A failure of stable itself is a
BackendError (503). Bad input (text, filter, version) is the caller's and never falls back.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Mapping
from typing import Any, Literal, Protocol

import structlog
from msgspec.structs import replace
from opentelemetry import trace
from opentelemetry.trace import SpanKind, StatusCode, Tracer

from proxy.models.encoders import Encoder, clean_text
from proxy.models.loader import EncoderKey, encoder_key
from proxy.serving.attributes import answer_attributes, stage_attributes
from proxy.serving.cohorts import CohortRecorder
from proxy.serving.popularity import HitRecorder
from proxy.serving.query import (
    AnswerSink,
    Asked,
    Found,
    Query,
    RolloutInfo,
    SearchResponse,
)
from proxy.serving.resultcache import ResultCache
from proxy.serving.shadow import Shadow
from proxy.telemetry import Attr, Metrics
from proxy.vectors.base import (
    Hit,
    Named,
    Nearest,
    Sparse,
    Stage,
    Text,
    VectorStore,
    id_key,
    parse_filter,
)
from rollout_rules.decide import Context, Decision, Reason, decide, stickiness_value
from rollout_rules.errors import (
    BackendError,
    ModelError,
    NotFoundError,
    RuleError,
    StoreUnavailable,
)
from rollout_rules.model import Rollout, Version
from rollout_rules.online import REMEMBERED, Answer, interleaves, team_draft

log = structlog.get_logger("embedshift.search")


class Rules(Protocol):
    """The snapshot the request path reads (the RuleWatcher, or a fake in unit tests)."""

    rollouts: dict[str, Rollout]
    coverage: dict[str, dict[str, float]]
    last_error: str | None

    @property
    def age_s(self) -> float | None:
        """Seconds since the rules were last read in full; None if they never were."""


class Searcher:
    def __init__(self, rules: Rules, encoders: Mapping[EncoderKey, Encoder], *,
                 store: VectorStore, metrics: Metrics, tracer: Tracer,
                 results: ResultCache | None = None, deadline_s: float = 10.0,
                 log_queries: bool = False, popularity: HitRecorder | None = None,
                 cohorts: CohortRecorder | None = None, shadow: Shadow | None = None,
                 answers: AnswerSink | None = None) -> None:
        self.rules, self.encoders, self.store = rules, encoders, store
        self.answers = answers  # every answer, remembered for its feedback
        self.popularity = popularity  # what stable answers, for the backfill and the gate
        self.cohorts = cohorts if cohorts is not None else CohortRecorder()
        self.shadow = shadow
        self.metrics, self.tracer, self.log_queries = metrics, tracer, log_queries
        self.results = results if results is not None else ResultCache(0, 0)
        self.deadline_s = deadline_s
        self.unavailable: dict[tuple[str, str], str] = {}
        """(alias, version) that must not serve, and why (see ``mark_unavailable``): the
        candidate's queries fall back to stable, stable's get a 503 naming the reason."""

    def mark_unavailable(self, alias: str, reasons: Mapping[str, str]) -> None:
        """Replace what is unavailable of ``alias``: ``reasons`` by version name, empty when
        every version may serve (or the alias is gone)."""
        self.unavailable = {**{k: v for k, v in self.unavailable.items() if k[0] != alias},
                            **{(alias, name): reason for name, reason in reasons.items()}}

    async def search(self, alias: str, asked: Asked, span: trace.Span | None = None
                     ) -> SearchResponse:
        """``asked``: the request as the edge decoded and checked it (``query.asked``);
        ``span``: the request's own (default: the current one); its stages' spans are its
        children, started only when it records."""
        started = time.perf_counter()
        rollout = self.rollout(alias)
        if asked.fused is not None:  # names and kinds checked before anything is decided
            in_version(asked.fused, rollout, rollout.version(rollout.stable))
        coverage = self.rules.coverage.get(alias, {})
        decision = decide(rollout, asked.context, coverage.get(rollout.candidate or ""),
                          asked.version)
        if decision.reason is Reason.OVERRIDE_REFUSED:
            allowed = "allowed" if rollout.overrides.allow_request else "off"
            raise RuleError("version", f"{asked.version!r} cannot be requested for {alias} "
                                       f"(declared: {rollout.version_names}; overrides "
                                       f"{allowed})")
        span = span if span is not None else trace.get_current_span()
        deadline = asyncio.get_running_loop().time() + self.deadline_s  # for both attempts
        query = Query(asked, coverage, deadline, rollout.revision, rollout.guard.max_p99_ms,
                      span.is_recording())
        if rollout.experiment is not None and decision.reason is not Reason.OVERRIDE:
            trace_id = format(span.get_span_context().trace_id, "032x")
            if interleaves(rollout, asked.context, coverage.get(rollout.candidate or ""),
                           trace_id):
                return await self._interleaved(alias, rollout, decision, query, span=span,
                                               started=started)
        cohorts = self.cohorts
        version = rollout.version(decision.version)  # looked up once: the answer names it
        try:
            found = await self.find(alias, version, query)
        except TimeoutError:
            cohorts.answered(alias, rollout.revision, decision.version, failed=True)
            raise
        except (BackendError, ModelError) as exc:
            stable = decision.version == rollout.stable
            cohorts.answered(alias, rollout.revision, decision.version, failed=True,
                             fallback=not stable)
            if stable:
                self.metrics.child(self.metrics.errors, alias, decision.version,
                                   "stable_failed").inc()
                raise
            self.metrics.child(self.metrics.fallbacks, alias, decision.version).inc()
            span.set_attribute(Attr.FALLBACK_FROM, decision.version)
            log.warning("candidate_failed", alias=alias, version=decision.version,
                        error=str(exc), answered_by=rollout.stable)
            decision = replace(decision, version=rollout.stable, reason=Reason.FALLBACK)
            version = rollout.version(rollout.stable)
            found = await self._fallback(alias, version, rollout.revision, query)
        else:
            cohorts.answered(alias, rollout.revision, decision.version)
            if self.shadow is not None:
                self.shadow.maybe(self, rollout, decision.version, query, found.hits)
        return self._answer(alias, rollout, version, decision, found, started=started,
                            span=span, text=asked.text, context=asked.context)

    async def _interleaved(self, alias: str, rollout: Rollout, decision: Decision,
                           query: Query, *, span: trace.Span, started: float
                           ) -> SearchResponse:
        """Both versions searched at once and their hits merged by team draft, the coin seeded
        by the trace id; each hit keeps its own version's score. A candidate that fails leaves
        stable's answer alone (a fallback, as for its own users); stable failing fails the
        request, as it would have."""
        stable, candidate = rollout.version(rollout.stable), rollout.version(
            rollout.candidate or rollout.stable)
        mine, theirs = await asyncio.gather(self.find(alias, stable, query),
                                            self.find(alias, candidate, query),
                                            return_exceptions=True)
        if isinstance(mine, BaseException):
            self.cohorts.answered(alias, rollout.revision, stable.name, failed=True)
            raise mine
        self.cohorts.answered(alias, rollout.revision, stable.name)
        if isinstance(theirs, BaseException):
            if not isinstance(theirs, (BackendError, ModelError, TimeoutError)):
                raise theirs
            self.cohorts.answered(alias, rollout.revision, candidate.name, failed=True,
                                  fallback=True)
            self.metrics.child(self.metrics.fallbacks, alias, candidate.name).inc()
            log.warning("candidate_failed", alias=alias, version=candidate.name,
                        error=str(theirs), answered_by=stable.name)
            decision = replace(decision, version=stable.name, reason=Reason.FALLBACK)
            return self._answer(alias, rollout, stable, decision, mine, started=started,
                                span=span, text=query.asked.text,
                                context=query.asked.context)
        self.cohorts.answered(alias, rollout.revision, candidate.name)
        trace_id = format(span.get_span_context().trace_id, "032x")
        by_key = {id_key(hit.id): hit for hit in theirs.hits}
        by_key.update({id_key(hit.id): hit for hit in mine.hits})
        merged = team_draft([id_key(h.id) for h in mine.hits],
                            [id_key(h.id) for h in theirs.hits], query.asked.limit, trace_id)
        found = Found([by_key[key] for key, _ in merged],
                      mine.result_cached and theirs.result_cached,
                      mine.vector_cached and theirs.vector_cached)
        decision = replace(decision, version=candidate.name, reason=Reason.INTERLEAVED)
        return self._answer(alias, rollout, candidate, decision, found, started=started,
                            span=span, text=query.asked.text, context=query.asked.context,
                            teams=tuple([int(team) for _, team in merged]),
                            baseline=stable.name)

    def rollout(self, alias: str) -> Rollout:
        """The alias's rule as last read; NotFoundError if none declares it."""
        rollout = self.rules.rollouts.get(alias)
        if rollout is None:
            if self.rules.age_s is None:  # never read the rules: unknown, not undeclared
                raise StoreUnavailable(f"the rules for {alias!r} are not loaded yet: "
                                       f"{self.rules.last_error or 'still starting'}")
            raise NotFoundError(alias)
        return rollout

    def route(self, alias: str, user_id: str | None, random_key: str) -> Version:
        """The version a caller would be answered from now (what it sees described)."""
        rollout = self.rollout(alias)
        coverage = self.rules.coverage.get(alias, {}).get(rollout.candidate or "")
        decision = decide(rollout, Context(user_id=user_id, random_key=random_key), coverage)
        return rollout.version(decision.version)

    async def search_vector(self, alias: str, vector: list[float], *, limit: int,
                            raw_filter: dict[str, Any] | None, with_payload: bool,
                            version: str | None = None, span: trace.Span | None = None,
                            context: Context | None = None) -> SearchResponse:
        """A vector searched in ``version``'s collection, the one whose model made it (known
        when the proxy handed it out: ``proxy.serving.embed``), else in stable's: nothing else
        says which model made it, and stable's is the space its users are answered from. A
        vector of another size is refused (that model did not make it)."""
        started = time.perf_counter()
        rollout = self.rollout(alias)
        space = rollout.version(version or rollout.stable)
        if len(vector) != space.dimensions:
            raise RuleError("vector", f"has {len(vector)} numbers; {alias} answers vectors "
                                      f"from {space.model} ({space.name}), which has "
                                      f"{space.dimensions}")
        self._servable(alias, space)
        query_filter = parse_filter(raw_filter)
        return await self._in_space(alias, rollout, space, self.store.search(
            space.target, vector, limit, query_filter, with_payload),
            started=started, span=span, context=context)

    async def search_stage(self, alias: str, stage: Stage, version: str, *, with_payload: bool,
                           span: trace.Span | None = None, context: Context | None = None
                           ) -> SearchResponse:
        """A staged query (prefetches, fusion; the migrated vector and carried ones by the
        application's names) run by the engine in ``version``'s collection, the one that made
        its migrated vector (or the caller's routed one when it holds none)."""
        started = time.perf_counter()
        rollout = self.rollout(alias)
        space = rollout.version(version)
        self._servable(alias, space)
        engine_stage = in_version(await self._encoded(stage, rollout, space), rollout, space)
        return await self._in_space(alias, rollout, space, self.store.query(
            space.target, engine_stage, with_payload), started=started, span=span,
            context=context)

    def _servable(self, alias: str, version: Version) -> None:
        blocked = self.unavailable.get((alias, version.name))
        if blocked is not None:
            raise ModelError(f"{alias}: version {version.name} is unavailable: {blocked}")

    async def _in_space(self, alias: str, rollout: Rollout, space: Version,
                        search: Awaitable[list[Hit]], *, started: float,
                        span: trace.Span | None, context: Context | None) -> SearchResponse:
        """A search the caller's vectors placed in ``space`` (no routing decision), timed
        against the deadline and answered as every search is."""
        searching = time.perf_counter()
        async with asyncio.timeout(self.deadline_s):
            hits = await search
        self.metrics.child(self.metrics.search_latency, alias, space.name).observe(
            time.perf_counter() - searching)
        decision = Decision(space.name, Reason.VECTOR, None, rollout.revision, 0.0)
        span = span if span is not None else trace.get_current_span()
        return self._answer(alias, rollout, space, decision, Found(hits, False, False),
                            started=started, span=span, text="", context=context)

    async def _encoded(self, stage: Stage, rollout: Rollout, version: Version) -> Stage:
        """The stage with the text it searches the migrated vector by encoded by ``version``'s
        model (a Document in a prefetch, as cloud-inference clients send it)."""
        query = stage.query
        if isinstance(query, Nearest) and isinstance(query.vector, Text) and \
                query.using == rollout.vector:
            encoder = self.encoders.get(encoder_key(version))
            if encoder is None:
                raise ModelError(f"no encoder loaded for {version.name} ({version.model})")
            vector, _ = await encoder.encode(clean_text(query.vector.text))
            query = Nearest(query.using, vector.tolist())
        return stage._replace(query=query, prefetch=tuple(
            [await self._encoded(inner, rollout, version) for inner in stage.prefetch]))

    async def _fallback(self, alias: str, stable: Version, revision: int, query: Query
                        ) -> Found:
        """Stable answers for a failed candidate; a search of stable's like any other, so it
        counts in stable's cohort (the guard's baseline when few users are left on it)."""
        try:
            found = await self.find(alias, stable, query)
        except (BackendError, ModelError, TimeoutError):
            self.cohorts.answered(alias, revision, stable.name, failed=True)
            raise
        self.cohorts.answered(alias, revision, stable.name)
        return found

    async def find(self, alias: str, version: Version, query: Query) -> Found:
        """A recent answer of this version to the same query, else encode and search by the
        deadline (TimeoutError past it: the whole request is late, not just this version)."""
        self._servable(alias, version)
        asked = query.asked
        key = self.results.key(version, asked.text, asked.limit, asked.raw_filter,
                               asked.with_payload, fused=asked.fused_key)
        coverage = query.coverage.get(version.name)
        hits = self.results.get(key, coverage)
        if hits is not None:
            return Found(hits, result_cached=True, vector_cached=True)
        async with asyncio.timeout_at(query.deadline):
            found = await self._search_version(alias, version, query)
        self.results.put(key, coverage, found.hits)
        return found

    async def _search_version(self, alias: str, version: Version, query: Query) -> Found:
        asked = query.asked
        encoder = self.encoders.get(encoder_key(version))
        if encoder is None:
            raise ModelError(f"no encoder loaded for {version.name} ({version.model})")
        metrics = self.metrics
        started = time.time_ns()
        try:
            vector, cache_hit = await encoder.encode(asked.text)
        except BaseException as exc:  # cancelled at the deadline too: the trace shows where
            self._stage_span(query, version, "encode", started, error=exc)
            raise
        searching = time.time_ns()
        metrics.child(metrics.encode_latency, alias, version.name).observe(
            (searching - started) / 1e9)
        metrics.child(metrics.cache, alias, version.name, "hit" if cache_hit else "miss").inc()
        if not cache_hit:  # a cached vector costs a dict lookup: no span for that
            self._stage_span(query, version, "encode", started)
        try:
            if asked.fused is None:
                hits = await self.store.search(version.target, vector, asked.limit,
                                               asked.filter, asked.with_payload)
            else:  # the text's search beside the caller's, fused by the engine
                hits = await self.store.query(version.target, fused(
                    asked, vector.tolist(), self.rollout(alias), version), asked.with_payload)
        except BaseException as exc:
            if isinstance(exc, BackendError):
                metrics.child(metrics.errors, alias, version.name, "search").inc()
            self._stage_span(query, version, "search", searching, error=exc)
            raise
        searched = time.time_ns() - searching
        metrics.child(metrics.search_latency, alias, version.name).observe(searched / 1e9)
        self.cohorts.searched(alias, query.revision, version.name, searched / 1e6,
                              query.slow_ms)
        self._stage_span(query, version, "search", searching, hits=len(hits))
        return Found(hits, result_cached=False, vector_cached=cache_hit)

    def _stage_span(self, query: Query, version: Version, stage: Literal["encode", "search"],
                    start_ns: int, *, hits: int | None = None,
                    error: BaseException | None = None) -> None:
        """A child of the current span, recorded once the stage is over: it never becomes the
        current span, so nothing is attached to or detached from the context per stage. None
        when the query's span does not record (it is then not current either: a span started
        here would be a root of its own), and then its attributes are not built either."""
        if not query.traced:
            return
        name, kind = (("encode", SpanKind.INTERNAL) if stage == "encode"
                      else (f"search {version.target.collection}", SpanKind.CLIENT))
        span = self.tracer.start_span(name, kind=kind, start_time=start_ns,
                                      attributes=stage_attributes(version, stage, hits))
        if error is not None:
            span.record_exception(error)
            span.set_status(StatusCode.ERROR, str(error))
        span.end()

    def _answer(self, alias: str, rollout: Rollout, version: Version, decision: Decision,
                found: Found, *, started: float, span: trace.Span, text: str,
                context: Context | None, teams: tuple[int, ...] = (), baseline: str = ""
                ) -> SearchResponse:
        """``version``: the one that answered (``decision.version``'s, looked up by the
        caller); ``context``: who asked (None: unknown); ``teams``, ``baseline``: an
        interleaved answer's."""
        hits = found.hits
        elapsed = time.perf_counter() - started
        metrics = self.metrics
        metrics.child(metrics.requests, alias, version.name, decision.reason).inc()
        metrics.child(metrics.latency, alias, version.name).observe(elapsed)
        metrics.child(metrics.results, alias, version.name,
                      "hit" if found.result_cached else "miss").inc()
        metrics.child(metrics.effective_percent, alias).set(decision.effective_percent)
        if span.is_recording():  # an unsampled query pays nothing for its attributes
            span.set_attributes(answer_attributes(alias, version, decision, found))
        if self.popularity is not None and version.name == rollout.stable:
            # stable's answers only: what the candidate must hold (completeness) and what the
            # backfill should bring first; the candidate's own answers hold themselves
            self.popularity.record(rollout.alias, hits)
        trace_id = format(span.get_span_context().trace_id, "032x")
        if self.answers is not None:
            self.answers.answered(trace_id, Answer(
                alias=alias, version=version.name, revision=decision.revision,
                user=_user_key(rollout, context, trace_id),
                tenant=context.tenant if context is not None else None,
                at_ms=int(time.time() * 1000),
                docs=tuple([hit.id for hit in hits[:REMEMBERED]]),
                teams=teams[:REMEMBERED], baseline=baseline), text,
                None if teams or not hits else
                hits[0].score if version.metric in ("cosine", "dot") else -hits[0].score)
        extra = {"query": text} if self.log_queries else {}
        log.info("query", alias=alias, model_version=version.name, reason=str(decision.reason),
                 bucket=decision.bucket, revision=decision.revision, hits=len(hits),
                 cached=found.result_cached, latency_ms=round(elapsed * 1000, 2),
                 trace_id=trace_id, **extra)
        return SearchResponse(
            hits=hits, model_version=version.name, model=version.model,
            collection=version.target.collection, trace_id=trace_id,
            rollout=RolloutInfo(alias=alias, bucket=decision.bucket, reason=decision.reason,
                                revision=decision.revision,
                                effective_percent=decision.effective_percent))


def _user_key(rollout: Rollout, context: Context | None, trace_id: str) -> str:
    """Who the answer's feedback is capped for: the sticky key that routed it; a caller with
    none (a raw vector, a request with no key) is a user of one answer."""
    key = stickiness_value(rollout.stickiness, context) if context is not None else None
    return key or f"trace:{trace_id}"


def migrated_vectors(stage: Stage, rollout: Rollout) -> list[list[float]]:
    """The dense vectors a staged query searches the migrated vector by (its provenance picks
    the version that answers)."""
    found = []
    if isinstance(stage.query, Nearest) and stage.query.using == rollout.vector and \
            isinstance(stage.query.vector, list):
        found.append(stage.query.vector)
    for inner in stage.prefetch:
        found.extend(migrated_vectors(inner, rollout))
    return found


def in_version(stage: Stage, rollout: Rollout, version: Version) -> Stage:
    """The staged query as ``version``'s collection names its vectors: the migrated one under
    the version's own vector name, carried ones as they are; RuleError naming ``using`` for a
    name the alias does not carry, a kind it does not hold, or a vector of another size."""
    query = stage.query
    if isinstance(query, Nearest):
        name, vector = query.using, query.vector
        if name == rollout.vector and isinstance(vector, Text):
            raise RuleError("query", "the text must be encoded first")  # by search_stage
        if isinstance(vector, Text):
            raise RuleError("using", f"{name!r} of {rollout.alias} is carried as the "
                                     "application wrote it: send its vector, not text")
        if name == rollout.vector:
            if isinstance(vector, Sparse):
                raise RuleError("using", f"{name or 'the unnamed vector'} of {rollout.alias} "
                                         "is dense: a sparse vector cannot search it")
            if len(vector) != version.dimensions:
                raise RuleError("vector", f"has {len(vector)} numbers; {rollout.alias} "
                                          f"answers vectors from {version.model} "
                                          f"({version.name}), which has {version.dimensions}")
            query = Nearest(version.target.vector_name or "", vector)
        else:
            carried = rollout.carried.get(name)
            if carried is None:
                held = ", ".join(repr(n) for n in (rollout.vector, *rollout.carried))
                raise RuleError("using", f"{rollout.alias} has no vector {name!r} (it has "
                                         f"{held})")
            if carried.sparse != isinstance(vector, Sparse):
                raise RuleError("using", f"{name!r} of {rollout.alias} is "
                                         f"{'sparse' if carried.sparse else 'dense'}")
            if not carried.sparse and len(vector) != carried.size:
                raise RuleError("vector", f"has {len(vector)} numbers; {name!r} holds "
                                          f"{carried.size}")
    return stage._replace(query=query, prefetch=tuple(
        in_version(inner, rollout, version) for inner in stage.prefetch))


def split_named(rollout: Rollout, named: Mapping[str, Named], where: str
                ) -> tuple[list[float] | None, dict[str, Named]]:
    """A written point's vectors by the application's names: the migrated one (if given under
    its name) and the carried ones; RuleError naming ``where.<name>`` for any other name, or a
    vector of the wrong kind or size."""
    migrated, carried = None, {}
    for name, vector in named.items():
        if name == rollout.vector:
            if isinstance(vector, Sparse):
                raise RuleError(f"{where}.{name}", "is the migrated vector: a dense one")
            migrated = vector
            continue
        spec = rollout.carried.get(name)
        if spec is None:
            held = ", ".join(repr(n) for n in (rollout.vector, *rollout.carried))
            raise RuleError(f"{where}.{name}", f"{rollout.alias} has no vector {name!r} (it "
                                               f"has {held})")
        if spec.sparse != isinstance(vector, Sparse) or (
                not spec.sparse and len(vector) != spec.size):
            raise RuleError(f"{where}.{name}", "must be a sparse vector" if spec.sparse else
                            f"must be a dense vector of {spec.size} numbers")
        carried[name] = vector
    return migrated, carried


def fused(asked: Asked, vector: list[float], rollout: Rollout, version: Version) -> Stage:
    """A text query with searches beside it (``asked.fused``) as ``version`` runs it: the text's
    vector searched in the migrated vector and each of the caller's, every one under the
    request's filter, fused."""
    assert asked.fused is not None
    text = Stage(Nearest(rollout.vector, vector), asked.limit, filter=asked.filter)
    return in_version(asked.fused._replace(filter=asked.filter, prefetch=(
        text, *(p._replace(filter=asked.filter) for p in asked.fused.prefetch))),
        rollout, version)

