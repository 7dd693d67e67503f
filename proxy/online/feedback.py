"""Feedback joined to the answer it is about: ``POST /v1/feedback``'s work, knowing nothing of
HTTP.

An event names the answer by the trace id the answer carried (the native answer's
``trace_id``, the ``x-embedshift-trace-id`` header of Qdrant and embeddings answers) and the
document by its own id. A batch is checked whole before anything counts: an event name that is
neither built in (click, convert, thumbs_up, thumbs_down) nor declared (``feedback_events``) is
a 400 naming its place. Then each event gets an outcome:

- ``counted``: joined and credited (``proxy.state.answers``: once per answer, document and
  event; at most ``feedback_per_user`` per user while answers are remembered);
- ``replayed`` (its ``event_id`` was seen), ``repeated`` (the same event on the same document
  of the same answer), ``capped`` (its user's feedback is spent): answered, not counted again;
- ``unknown_trace``: no remembered answer, because it never was, or was forgotten
  (``feedback_ttl``): answered and counted as such, never an error;
- ``refused``: joined, but it cannot be about that answer: its time is before the answer, or
  the document was not in it (named), or it stood elsewhere than ``position`` says.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Annotated, Literal

import msgspec

from proxy.state.answers import AnswerLog, Credit
from proxy.telemetry import Metrics
from proxy.vectors.base import id_key
from rollout_rules.errors import RuleError
from rollout_rules.online import BUILT_IN_EVENTS, Answer, Placed, place

MAX_EVENTS = 1000
EventName = Annotated[str, msgspec.Meta(min_length=1, max_length=64, pattern=r"^[a-z][a-z0-9_]*$")]


class FeedbackEvent(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Something a user did with one document of one answer."""

    trace_id: Annotated[str, msgspec.Meta(pattern=r"^[0-9a-f]{32}$")]
    event: EventName
    doc_id: Annotated[str, msgspec.Meta(min_length=1, max_length=256)] | int
    position: Annotated[int, msgspec.Meta(ge=0, le=10_000)] | None = None
    value: float | None = None
    at: datetime | None = None  # when it happened (RFC 3339); default: when it arrives
    event_id: Annotated[str, msgspec.Meta(min_length=1, max_length=128)] | None = None


class FeedbackBatch(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The body of ``POST /v1/feedback``."""

    events: Annotated[list[FeedbackEvent], msgspec.Meta(min_length=1, max_length=MAX_EVENTS)]


Outcome = Literal["counted", "replayed", "repeated", "capped", "unknown_trace", "refused"]


class EventOutcome(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    index: int  # the event's place in the batch
    outcome: Outcome
    reason: str | None = None  # why a refused event was refused


class FeedbackAnswer(msgspec.Struct, frozen=True, kw_only=True):
    """How many events of each outcome, and every event not counted, by its place."""

    counted: int
    not_counted: list[EventOutcome]
    totals: dict[str, int]


class FeedbackDesk:
    def __init__(self, answers: AnswerLog, metrics: Metrics, *, ttl_s: float, per_user: int,
                 declared: Sequence[str] = (),
                 recent: Callable[[str], Answer | None] = lambda _trace: None) -> None:
        """``recent``: this proxy's answers not yet in the shared log, by trace id."""
        self.answers, self.metrics, self.ttl_s, self.per_user = answers, metrics, ttl_s, per_user
        self.events = frozenset((*BUILT_IN_EVENTS, *declared))
        self.recent = recent

    async def take(self, batch: FeedbackBatch) -> FeedbackAnswer:
        """Check the batch whole, then join and credit each event (see the module)."""
        for index, event in enumerate(batch.events):
            if event.event not in self.events:
                raise RuleError(f"events[{index}].event", (
                    f"{event.event!r} is not an event this proxy counts (built in: "
                    f"{', '.join(BUILT_IN_EVENTS)}; declare others in feedback_events)"))
        traces = sorted({e.trace_id for e in batch.events})
        by_trace = {trace: self.recent(trace) for trace in traces}
        asked = [trace for trace, found in by_trace.items() if found is None]
        by_trace.update(zip(asked, await self.answers.recall(asked), strict=True))
        outcomes = [await self._one(index, event, by_trace.get(event.trace_id))
                    for index, event in enumerate(batch.events)]
        totals = Counter(o.outcome for o in outcomes)
        return FeedbackAnswer(counted=totals["counted"],
                              not_counted=[o for o in outcomes if o.outcome != "counted"],
                              totals=dict(sorted(totals.items())))

    async def _one(self, index: int, event: FeedbackEvent, answer: Answer | None
                   ) -> EventOutcome:
        if answer is None:
            self._count("", event.event, "unknown_trace")
            return EventOutcome(index=index, outcome="unknown_trace")
        placed = place(answer, event.doc_id, _ms(event.at))
        if isinstance(placed, Placed) and event.position is not None \
                and event.position != placed.position:
            placed = (f"position {event.position} is not where doc_id {id_key(event.doc_id)} "
                      f"stood in the answer ({placed.position})")
        if isinstance(placed, str):
            self._count(answer.alias, event.event, "refused")
            return EventOutcome(index=index, outcome="refused", reason=placed)
        outcome = await self.answers.credit(
            Credit(trace_id=event.trace_id, answer=answer, event=event.event, placed=placed,
                   event_id=event.event_id, value=event.value),
            per_user=self.per_user, ttl_s=self.ttl_s)
        self._count(answer.alias, event.event, outcome)
        return EventOutcome(index=index, outcome=_outcome(outcome))

    def _count(self, alias: str, event: str, outcome: str) -> None:
        self.metrics.child(self.metrics.feedback, alias, event, outcome).inc()


_CREDITED: dict[str, Outcome] = {"counted": "counted", "replayed": "replayed",
                                 "repeated": "repeated", "capped": "capped"}


def _outcome(found: str) -> Outcome:
    """The answer log's word for a credit, as an outcome (it says nothing else)."""
    return _CREDITED[found]


def _ms(at: datetime | None) -> int | None:
    if at is None:
        return None
    return int((at if at.tzinfo is not None else at.replace(tzinfo=UTC)).timestamp() * 1000)
