"""How a served model is called, decided without I/O: when to retry, how long to wait, when to
stop calling, how much a minute may carry, and what an answer must hold.

Everything here takes the time (and, for jitter, a random draw) as an argument, so the policy is
tested without a clock or a server; ``proxy.models.served`` does the calling.

- ``retry_delay``: full-jitter exponential backoff, never shorter than the service's
  ``Retry-After``;
- ``Circuit``: after ``threshold`` failures in a row the circuit opens and calls fail at once;
  after a cool-down one trial call is let through (half-open); success closes it, failure opens
  it again for twice as long (up to a cap);
- ``Bucket``: requests or tokens per minute, refilled continuously; bulk work (ingestion, the
  backfill) leaves a share of it to live queries;
- ``parse_embeddings``: the OpenAI ``/embeddings`` answer, checked (one vector per text, in
  order by ``index``, of the declared size), and the tokens the service counted.
"""

from __future__ import annotations

import email.utils
import math
import re
from dataclasses import dataclass
from typing import Protocol

import msgspec
import numpy as np
from numpy.typing import NDArray

from rollout_rules.errors import ModelError

RETRYABLE = frozenset({408, 409, 425, 429, 500, 502, 503, 504})
BASE_DELAY_S = 0.1
MAX_DELAY_S = 30.0


def retry_delay(attempt: int, retry_after_s: float | None, draw: float,
                base_s: float = BASE_DELAY_S, cap_s: float = MAX_DELAY_S) -> float:
    """Seconds to wait before retry number ``attempt`` (1 = the first retry): a uniform draw
    (``draw`` in [0, 1)) under ``base * 2**(attempt-1)`` (capped), but never before the
    service's ``Retry-After`` (also capped: a service asking for an hour gets ``cap_s``)."""
    ceiling = min(cap_s, base_s * 2.0 ** max(0, attempt - 1))
    jittered = draw * ceiling
    if retry_after_s is None:
        return jittered
    return min(cap_s, max(retry_after_s, jittered))


def parse_retry_after(value: str | None, now_epoch_s: float) -> float | None:
    """``Retry-After`` as seconds from now: delta-seconds or an HTTP date; None if absent or
    unreadable (then the backoff alone decides)."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        seconds = when.timestamp() - now_epoch_s
    if not math.isfinite(seconds):
        return None
    return max(0.0, seconds)


@dataclass
class Circuit:
    """Closed, open (until ``open_until``) or half-open (one trial call in flight)."""

    threshold: int = 5
    base_cooldown_s: float = 2.0
    max_cooldown_s: float = 60.0
    failures: int = 0  # in a row
    cooldown_s: float = 0.0  # the current one: doubles each time a trial fails
    open_until: float = 0.0
    trial: bool = False
    opened: int = 0  # times it opened (a metric)

    def state(self, now: float) -> str:
        if self.failures < self.threshold:
            return "closed"
        return "open" if self.trial or now < self.open_until else "half-open"

    def allow(self, now: float) -> bool:
        """Whether a call may go now; in half-open only the first asker's, the trial."""
        state = self.state(now)
        if state == "half-open":
            self.trial = True
        return state != "open"

    def succeeded(self) -> None:
        self.failures, self.trial, self.cooldown_s = 0, False, 0.0

    def failed(self, now: float) -> None:
        """A failed call; calls that were in flight when it opened do not extend it."""
        self.failures += 1
        was_trial, self.trial = self.trial, False
        if self.failures == self.threshold or (was_trial and self.failures > self.threshold):
            self.cooldown_s = (min(self.max_cooldown_s, self.cooldown_s * 2) if was_trial
                               and self.cooldown_s else self.base_cooldown_s)
            self.open_until = now + self.cooldown_s
            self.opened += 1

    def wait_s(self, now: float) -> float:
        """How long to wait before asking again (0 when closed or half-open; while a trial is
        in flight, a short while)."""
        return max(0.05, self.open_until - now) if self.state(now) == "open" else 0.0


class SharedLimits(Protocol):
    """A served model's rate limits and circuit, shared by every process that calls it (the
    proxies and their backfills): what each process takes is taken from one budget, and a
    circuit one process opened holds the others back too (``proxy.state.limits``)."""

    async def take(self, model: str, kind: str, amount: float, per_minute: float,
                   keep: float) -> float:
        """Take ``amount`` of the model's ``kind`` budget (``requests``, ``tokens``) beyond
        ``keep`` of a minute's; 0 when taken, else the seconds to wait (nothing taken)."""
        ...

    async def trip(self, model: str, seconds: float) -> None:
        """The model's circuit opened here for ``seconds``: the others hold back too."""
        ...

    async def tripped(self, model: str) -> float:
        """Seconds left of a circuit opened anywhere; 0 when none is open."""
        ...


@dataclass
class Bucket:
    """``per_minute`` units (requests or tokens), refilled continuously; 0 means unlimited."""

    per_minute: float
    level: float = -1.0
    updated: float = 0.0

    def take(self, amount: float, now: float, keep: float = 0.0) -> float:
        """Take ``amount`` if the bucket holds it beyond ``keep`` (a share of a minute kept for
        others, 0-1) and return 0; else take nothing and return the seconds to wait."""
        if self.per_minute <= 0:
            return 0.0
        if self.level < 0:
            self.level, self.updated = self.per_minute, now
        rate = self.per_minute / 60.0
        self.level = min(self.per_minute, self.level + (now - self.updated) * rate)
        self.updated = now
        amount = min(amount, self.per_minute * (1 - keep))  # a text bigger than a minute waits
        floor = self.per_minute * keep                       # for a full bucket, never forever
        if self.level - amount >= floor:
            self.level -= amount
            return 0.0
        return (floor + amount - self.level) / rate

    def spend(self, amount: float, now: float) -> None:
        """Correct the level by what the service really counted (``usage``) over the guess."""
        if self.per_minute > 0 and self.level >= 0:
            self.take(0, now)
            self.level -= amount


class _Item(msgspec.Struct):
    embedding: list[float] | str
    index: int = -1


class _Usage(msgspec.Struct):
    prompt_tokens: int = 0
    total_tokens: int = 0


class _Answer(msgspec.Struct):
    data: list[_Item]
    usage: _Usage | None = None


_CODE = re.compile(r"[A-Za-z0-9_.:-]{1,64}")


def error_code(body: bytes) -> str | None:
    """The service's own name for an error, from an OpenAI-style ``{"error": {"code", "type"}}``
    body: a short identifier, never the message (servers repeat the input in messages), else
    None."""
    try:
        answer = msgspec.json.decode(body)
    except msgspec.DecodeError:
        return None
    error = answer.get("error") if isinstance(answer, dict) else None
    if not isinstance(error, dict):
        return None
    for field in ("code", "type"):
        value = error.get(field)
        if isinstance(value, str) and _CODE.fullmatch(value):
            return value
    return None


def parse_embeddings(body: bytes, count: int, dimensions: int, source: str
                     ) -> tuple[NDArray[np.float32], int]:
    """(count, dimensions) float32 in the order of the texts sent, and the tokens the service
    counted (0 when it does not say); ModelError saying what is wrong with the answer.
    ``dimensions`` 0 takes the size of the first vector (a model being catalogued)."""
    try:
        answer = msgspec.json.decode(body, type=_Answer)
    except msgspec.DecodeError as exc:
        raise ModelError(f"{source}: the answer is not an embeddings list ({exc})") from exc
    if len(answer.data) != count:
        raise ModelError(f"{source}: {len(answer.data)} vectors came back for {count} texts")
    order = [item.index if item.index >= 0 else i for i, item in enumerate(answer.data)]
    if sorted(order) != list(range(count)):
        raise ModelError(f"{source}: the answer's indexes {sorted(order)[:8]} are not "
                         f"0..{count - 1}")
    first = answer.data[0].embedding if answer.data else []
    dimensions = dimensions or (len(first) if isinstance(first, list) else 0)
    result = np.empty((count, dimensions), dtype=np.float32)
    for position, item in zip(order, answer.data, strict=True):
        if isinstance(item.embedding, str):
            raise ModelError(f"{source}: a base64 vector came back; embedshift asks for floats")
        if len(item.embedding) != dimensions:
            raise ModelError(f"{source}: a vector of {len(item.embedding)} numbers came back; "
                             f"the model is catalogued with {dimensions}")
        with np.errstate(over="ignore"):  # past float32: inf, refused below
            result[position] = item.embedding
    if not np.isfinite(result).all():
        raise ModelError(f"{source}: the answer holds a number that is not finite")
    usage = answer.usage
    return result, (usage.total_tokens or usage.prompt_tokens) if usage else 0
