"""Answers remembered for their feedback, and the online counts feedback adds to, shared by every
proxy through Redis (``RedisAnswerLog``); ``MemoryAnswerLog`` is the fake, for one process.

An answer (``rollout_rules.online.Answer``: alias, version, revision, user key, tenant, time,
the ids shown and, interleaved, each one's team) is kept by its trace id for ``ttl_s``, at most
``cap`` of them (past it, the oldest flushes are dropped whole), so neither time nor a flood
grows the store that holds the rules. Feedback about it is credited by one script,
atomically on whichever proxy it reaches:

- a replayed ``event_id`` counts once (``replayed``);
- one credit per (answer, document, event) (``repeated``);
- at most ``per_user`` credited events per user key while the answer is remembered
  (``capped``): one user, however busy or forged, moves the figures by that much at most;
- a click is the answer's first (clicked in the top ``TOP_K``, its reciprocal rank) once; on an
  interleaved answer it goes to the team that placed the document, and the answer's preference
  (win, loss or tie) is moved, not added again.

The counts per alias are one hash: ``{version}:{field}`` for answers served by one version,
``il:{test}:{baseline}:{field}`` for interleaved ones (``rollout_rules.online`` reads them).
"""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from collections.abc import Sequence
from typing import Protocol, cast

import msgspec
from redis import asyncio as aioredis

from proxy.state.client import unavailable_on_error
from rollout_rules.online import NO_TEAM, RR_SCALE, Answer, Placed, preference_of

TOP_K = 10
DEFAULT_CAP = 1_000_000
_ENCODER = msgspec.msgpack.Encoder()
_DECODER = msgspec.msgpack.Decoder(Answer)


def counts_prefix(answer: Answer) -> str:
    """Where an answer's counts go: its version's, or its interleaved pair's."""
    return f"il:{answer.version}:{answer.baseline}" if answer.interleaved else answer.version


def user_slot(user: str) -> str:
    """A user key as a short digest: the cap's key, never the key itself."""
    return hashlib.blake2b(user.encode(), digest_size=12).hexdigest()


class Credit(msgspec.Struct, frozen=True, kw_only=True):
    """One event to credit to a remembered answer."""

    trace_id: str
    answer: Answer
    event: str
    placed: Placed
    event_id: str | None = None
    value: float | None = None


class AnswerLog(Protocol):
    async def remember(self, answers: Sequence[tuple[str, Answer]], ttl_s: float) -> int:
        """Remember answers by trace id and count them; how many older ones were dropped."""
        ...

    async def recall(self, trace_ids: Sequence[str]) -> list[Answer | None]:
        """Each trace's answer while it is remembered, else None."""
        ...

    async def credit(self, credit: Credit, *, per_user: int, ttl_s: float) -> str:
        """``counted``, ``replayed``, ``repeated`` or ``capped``."""
        ...

    async def add(self, alias: str, fields: dict[str, int]) -> None:
        """Add to the alias's online counts (re-queries and zero-hit answers a proxy saw)."""
        ...

    async def counts(self, alias: str) -> dict[str, float]:
        """The alias's online counts, by field."""
        ...

    async def reset(self, alias: str) -> None:
        """Forget the alias's counts (a new experiment starts from none)."""
        ...


REMEMBER = """
local answers, batches, held = KEYS[1], KEYS[2], KEYS[3]
local now, expires, cap, keep_ms = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]),
  tonumber(ARGV[4])
-- the batch in one argument: per answer, its trace id and its stored value, each after its
-- length in hex (4 digits, then 8)
local data, at, fields, traces = ARGV[5], 1, {}, {}
while at <= #data do
  local n = tonumber(string.sub(data, at, at + 3), 16)
  local trace = string.sub(data, at + 4, at + 3 + n)
  at = at + 4 + n
  local m = tonumber(string.sub(data, at, at + 7), 16)
  fields[#fields + 1] = trace
  fields[#fields + 1] = string.sub(data, at + 8, at + 7 + m)
  traces[#traces + 1] = trace
  at = at + 8 + m
end
if #traces > 0 then  -- one HSET for the batch, and one index entry naming its answers
  redis.call('HSET', answers, unpack(fields))
  redis.call('ZADD', batches, expires, table.concat(traces, ','))
  redis.call('INCRBY', held, #traces)
end
local function forget(batch)
  local ids = {}
  for id in string.gmatch(batch, '[^,]+') do ids[#ids + 1] = id end
  for k = 1, #ids, 500 do
    redis.call('HDEL', answers, unpack(ids, k, math.min(k + 499, #ids)))
  end
  redis.call('ZREM', batches, batch)
  redis.call('DECRBY', held, #ids)
  return #ids
end
for _, batch in ipairs(redis.call('ZRANGEBYSCORE', batches, '-inf', now, 'LIMIT', 0, 100)) do
  forget(batch)
end
local dropped = 0
while tonumber(redis.call('GET', held) or '0') > cap do  -- the oldest batches first
  local oldest = redis.call('ZRANGE', batches, 0, 0)
  if #oldest == 0 then redis.call('SET', held, 0) break end
  dropped = dropped + forget(oldest[1])
end
for _, key in ipairs(KEYS) do redis.call('PEXPIRE', key, keep_ms) end
return dropped
"""

CREDIT = """
local credits, user, counts = KEYS[1], KEYS[2], KEYS[3]
local event_id, event, position, team = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4])
local base, keep_ms, cap, value = ARGV[5], tonumber(ARGV[6]), tonumber(ARGV[7]), ARGV[8]
local rr, top = tonumber(ARGV[9]), ARGV[10]
if event_id ~= '' and redis.call('HSETNX', credits, 'id:' .. event_id, 1) == 0 then
  return 'replayed'
end
local fresh = redis.call('HSETNX', credits, event .. ':' .. position, 1)
redis.call('PEXPIRE', credits, keep_ms)
if fresh == 0 then return 'repeated' end
local spent = redis.call('INCR', user)
if spent == 1 then redis.call('PEXPIRE', user, keep_ms) end
if spent > cap then return 'capped' end
redis.call('HINCRBY', counts, base .. ':' .. event, 1)
if value ~= '' then redis.call('HINCRBYFLOAT', counts, base .. ':' .. event .. ':value', value) end
if event ~= 'click' then return 'counted' end
if top == '1' and redis.call('HSETNX', credits, 'clicked', position) == 1 then
  redis.call('HINCRBY', counts, base .. ':clicked', 1)
  redis.call('HINCRBY', counts, base .. ':rr', rr)
end
if team >= 0 then
  local clicks = {tonumber(redis.call('HGET', credits, 'team0') or '0'),
                  tonumber(redis.call('HGET', credits, 'team1') or '0')}
  local function preference(baseline, test)
    if baseline + test == 0 then return '' end
    if baseline == test then return 'tie' end
    if test > baseline then return 'test' end
    return 'baseline'
  end
  local before = preference(clicks[1], clicks[2])
  clicks[team + 1] = clicks[team + 1] + 1
  redis.call('HSET', credits, 'team' .. team, clicks[team + 1])
  local after = preference(clicks[1], clicks[2])
  if before ~= after then
    if before ~= '' then redis.call('HINCRBY', counts, base .. ':' .. before, -1) end
    redis.call('HINCRBY', counts, base .. ':' .. after, 1)
  end
end
return 'counted'
"""


def _credit_args(credit: Credit, keep_ms: int, per_user: int) -> list[str | int | float]:
    placed = credit.placed
    return [credit.event_id or "", credit.event, int(placed.position), int(placed.team),
            counts_prefix(credit.answer), keep_ms, per_user,
            "" if credit.value is None else repr(float(credit.value)),
            RR_SCALE // (placed.position + 1), "1" if placed.position < TOP_K else "0"]


class RedisAnswerLog:
    """Answers in one hash (trace id -> when it is forgotten, then the packed answer), an index
    of each flush's answers by when they are forgotten (one entry a flush, not an answer: the
    flush costs Redis one HSET and one ZADD), and how many are held; credits per answer in a
    hash that expires with it; all under one hash tag, so the scripts work on a cluster too.
    The cap drops whole flushes, the oldest first."""

    def __init__(self, client: aioredis.Redis, prefix: str, cap: int = DEFAULT_CAP) -> None:
        self.client, self.cap = client, cap
        self.base = f"{prefix}:{{answers}}"
        self._remember = client.register_script(REMEMBER)
        self._credit = client.register_script(CREDIT)

    async def remember(self, answers: Sequence[tuple[str, Answer]], ttl_s: float) -> int:
        if not answers:
            return 0
        now = int(time.time() * 1000)
        keep_ms = max(1, int(ttl_s * 1000))
        frames: list[bytes] = []
        served: dict[tuple[str, str], int] = {}
        until = b"%013d" % (now + keep_ms)  # kept ahead of each answer: recall reads it
        for trace_id, answer in answers:
            packed, trace = until + _ENCODER.encode(answer), trace_id.encode()
            frames.append(b"%04x%s%08x%s" % (len(trace), trace, len(packed), packed))
            key = (answer.alias, counts_prefix(answer))
            served[key] = served.get(key, 0) + 1
        args: list[int | bytes] = [now, now + keep_ms, self.cap, keep_ms, b"".join(frames)]
        async with unavailable_on_error(self.client):
            dropped = await self._remember(keys=[self.base, f"{self.base}:batches",
                                                 f"{self.base}:held"], args=args)
            async with self.client.pipeline(transaction=False) as pipe:
                for (alias, prefix), n in served.items():
                    pipe.hincrby(self._counts(alias), f"{prefix}:answers", n)
                await pipe.execute()
        return int(cast(int, dropped))

    async def recall(self, trace_ids: Sequence[str]) -> list[Answer | None]:
        if not trace_ids:
            return []
        async with unavailable_on_error(self.client):
            stored = await self.client.hmget(self.base, list(trace_ids))
        now = time.time() * 1000
        return [_DECODER.decode(raw[13:]) if isinstance(raw, bytes) and int(raw[:13]) > now
                else None for raw in stored]

    async def credit(self, credit: Credit, *, per_user: int, ttl_s: float) -> str:
        keep_ms = max(1, int(ttl_s * 1000))
        keys = [f"{self.base}:credit:{credit.trace_id}",
                f"{self.base}:user:{user_slot(credit.answer.user)}",
                self._counts(credit.answer.alias)]
        async with unavailable_on_error(self.client):
            outcome = await self._credit(keys=keys, args=_credit_args(credit, keep_ms,
                                                                        per_user))
        return outcome.decode() if isinstance(outcome, bytes) else str(outcome)

    async def add(self, alias: str, fields: dict[str, int]) -> None:
        async with unavailable_on_error(self.client), \
                self.client.pipeline(transaction=False) as pipe:
            for field, n in fields.items():
                pipe.hincrby(self._counts(alias), field, n)
            await pipe.execute()

    async def counts(self, alias: str) -> dict[str, float]:
        async with unavailable_on_error(self.client):
            raw = await self.client.hgetall(self._counts(alias))
        return {_text(k): float(v) for k, v in raw.items()}

    async def reset(self, alias: str) -> None:
        async with unavailable_on_error(self.client):
            await self.client.delete(self._counts(alias))

    def _counts(self, alias: str) -> str:
        return f"{self.base}:online:{alias}"


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class MemoryAnswerLog:
    """The same rules in one process's memory."""

    def __init__(self, cap: int = DEFAULT_CAP) -> None:
        self.cap = cap
        self._answers: OrderedDict[str, tuple[Answer, float]] = OrderedDict()
        self._credits: dict[str, dict[str, int]] = {}
        self._users: dict[str, tuple[int, float]] = {}
        self._counts: dict[str, dict[str, float]] = {}

    async def remember(self, answers: Sequence[tuple[str, Answer]], ttl_s: float) -> int:
        until = time.monotonic() + ttl_s
        for trace_id, answer in answers:
            self._answers.pop(trace_id, None)
            self._answers[trace_id] = (answer, until)
            self._add(answer.alias, f"{counts_prefix(answer)}:answers", 1)
        dropped = max(0, len(self._answers) - self.cap)
        for _ in range(dropped):
            self._answers.popitem(last=False)
        return dropped

    async def recall(self, trace_ids: Sequence[str]) -> list[Answer | None]:
        now = time.monotonic()
        found = [self._answers.get(trace_id) for trace_id in trace_ids]
        return [kept[0] if kept is not None and kept[1] > now else None for kept in found]

    async def credit(self, credit: Credit, *, per_user: int, ttl_s: float) -> str:
        credits = self._credits.setdefault(credit.trace_id, {})
        if credit.event_id is not None:
            if f"id:{credit.event_id}" in credits:
                return "replayed"
            credits[f"id:{credit.event_id}"] = 1
        placed, answer = credit.placed, credit.answer
        once = f"{credit.event}:{placed.position}"
        if once in credits:
            return "repeated"
        credits[once] = 1
        now = time.monotonic()
        slot = user_slot(answer.user)
        spent, until = self._users.get(slot, (0, now + ttl_s))
        spent = spent + 1 if until > now else 1
        self._users[slot] = (spent, until if until > now else now + ttl_s)
        if spent > per_user:
            return "capped"
        base = counts_prefix(answer)
        self._add(answer.alias, f"{base}:{credit.event}", 1)
        if credit.value is not None:
            self._add(answer.alias, f"{base}:{credit.event}:value", float(credit.value))
        if credit.event != "click":
            return "counted"
        if placed.position < TOP_K and "clicked" not in credits:
            credits["clicked"] = placed.position
            self._add(answer.alias, f"{base}:clicked", 1)
            self._add(answer.alias, f"{base}:rr", RR_SCALE // (placed.position + 1))
        if placed.team != NO_TEAM:
            before = preference_of(credits.get("team1", 0), credits.get("team0", 0))
            credits[f"team{placed.team}"] = credits.get(f"team{placed.team}", 0) + 1
            after = preference_of(credits.get("team1", 0), credits.get("team0", 0))
            if before != after:
                if before is not None:
                    self._add(answer.alias, f"{base}:{before}", -1)
                self._add(answer.alias, f"{base}:{after}", 1)
        return "counted"

    async def add(self, alias: str, fields: dict[str, int]) -> None:
        for field, n in fields.items():
            self._add(alias, field, n)

    async def counts(self, alias: str) -> dict[str, float]:
        return dict(self._counts.get(alias, {}))

    async def reset(self, alias: str) -> None:
        self._counts.pop(alias, None)

    def _add(self, alias: str, field: str, amount: float) -> None:
        counts = self._counts.setdefault(alias, {})
        counts[field] = counts.get(field, 0) + amount
