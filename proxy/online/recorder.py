"""Every answer remembered for its feedback, and what the proxy sees of users by itself.

On the request path ``answered`` costs a list append and a dict update: the answer (its ids,
who asked, which version, ``rollout_rules.online.Answer``) waits in memory, and a background
task writes the batch to the shared answer log every ``flush_s``, off the response path. Feedback
reaching the proxy that answered finds the answer here before that flush (``recent``); reaching
another proxy before it, it finds none and is counted as unknown, so the flush is short (0.2 s).

Seen without any application change, per version, counted with the answers:

- a **re-query**: the same user (the sticky key) searching again within ``requery_s`` with
  other text counts against the version that answered the first search (Hassan et al., CIKM
  2013: a reformulation soon after a search says it failed). Users are told apart by key only
  within this proxy (the last search of at most ``MAX_USERS`` of them), so a user whose next
  search reaches another proxy is not counted: an undercount alike for every version;
- an answer with **no hit**;
- an answer whose **best score is low** for its version: under the 10th percentile of the
  version's own first 1,000 answers here (``_scored``), as scores of two models do not
  compare (a drift of the collection or of the queries shows as a rate above 10%).

Bounded: at most ``MAX_PENDING`` answers wait between flushes (more are not remembered, and
counted as dropped). If Redis is down the batch is dropped, said once per flush: feedback is
evidence, never data the user needs.
"""

from __future__ import annotations

from collections import OrderedDict

import structlog

from proxy.state.answers import AnswerLog, counts_prefix
from proxy.tasks import Periodic
from rollout_rules.errors import StoreUnavailable
from rollout_rules.online import Answer

log = structlog.get_logger("embedshift.online")
MAX_PENDING = 20_000
MAX_USERS = 100_000
FLUSH_BATCH = 1000
FLOOR_SAMPLE, FLOOR_QUANTILE = 1000, 0.1


class AnswerRecorder:
    def __init__(self, answers: AnswerLog, ttl_s: float, *, requery_s: float = 60.0,
                 flush_s: float = 0.2) -> None:
        self.answers, self.ttl_s, self.requery_s, self.flush_s = (answers, ttl_s, requery_s,
                                                                 flush_s)
        self.pending: dict[str, Answer] = {}  # by trace id, until flushed
        self.seen: dict[str, dict[str, int]] = {}  # alias -> field -> count, between flushes
        self.last: OrderedDict[tuple[str, str], tuple[int, int, str]] = OrderedDict()
        self.dropped = 0
        self.samples: dict[tuple[str, str], list[float]] = {}  # top scores, until a floor
        self.floors: dict[tuple[str, str], float] = {}
        self._flusher = Periodic("answers-flush", flush_s, self.flush)

    def answered(self, trace_id: str, answer: Answer, text: str,
                 top: float | None = None) -> None:
        """Remember one answer; ``text``: the query's (compared with the user's next, never
        kept); ``top``: its best score, higher meaning closer."""
        if len(self.pending) >= MAX_PENDING:
            self.dropped += 1
            return
        self.pending[trace_id] = answer
        if not answer.docs:
            self._count(answer.alias, f"{counts_prefix(answer)}:zero_hits")
        if text:
            self._requery(answer, text)
        if top is not None:
            self._scored(answer, top)

    def _scored(self, answer: Answer, top: float) -> None:
        """A low top score, against the version's own: scores of two models are not
        comparable, so each version's floor is the 10th percentile of the top scores of its
        first ``FLOOR_SAMPLE`` answers here; later answers under it count as low."""
        key = (answer.alias, answer.version)
        floor = self.floors.get(key)
        if floor is None:
            sample = self.samples.setdefault(key, [])
            sample.append(top)
            if len(sample) >= FLOOR_SAMPLE:
                self.floors[key] = sorted(sample)[int(FLOOR_QUANTILE * len(sample))]
                del self.samples[key]
            return
        self._count(answer.alias, f"{answer.version}:scored")
        if top < floor:
            self._count(answer.alias, f"{answer.version}:low_top")

    def recent(self, trace_id: str) -> Answer | None:
        """An answer not yet flushed: feedback reaching the proxy that answered is joined
        however soon it comes."""
        return self.pending.get(trace_id)

    def _requery(self, answer: Answer, text: str) -> None:
        key = (answer.alias, answer.user)
        digest = hash(text.casefold())  # compared within this process only
        before = self.last.pop(key, None)
        if before is not None and before[1] != digest \
                and answer.at_ms - before[0] <= self.requery_s * 1000:
            self._count(answer.alias, f"{before[2]}:requery")
        self.last[key] = (answer.at_ms, digest, counts_prefix(answer))
        if len(self.last) > MAX_USERS:
            self.last.popitem(last=False)

    def _count(self, alias: str, field: str) -> None:
        fields = self.seen.setdefault(alias, {})
        fields[field] = fields.get(field, 0) + 1

    async def flush(self) -> None:
        pending, self.pending = self.pending, {}
        seen, self.seen = self.seen, {}
        try:
            items = list(pending.items())
            for start in range(0, len(items), FLUSH_BATCH):  # one script call a thousand
                await self.answers.remember(items[start:start + FLUSH_BATCH], self.ttl_s)
            for alias, fields in seen.items():
                await self.answers.add(alias, fields)
        except StoreUnavailable as exc:
            log.warning("answers_dropped", answers=len(pending), error=str(exc))

    def start(self) -> None:
        self._flusher.start()

    async def stop(self) -> None:
        await self._flusher.stop()
