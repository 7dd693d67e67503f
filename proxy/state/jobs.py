"""The backfill's work queue in Redis: batches claimed under leases that expire.

Keys (``P`` the prefix, ``J`` = ``P:{alias}:backfill:<version>``, one alias's slot):

    J:queue    sorted set of batch numbers not yet claimed, by priority (most-queried first)
    J:batches  hash  batch number -> the batch's stable point ids (JSON)
    J:leases   sorted set of claimed batch numbers by lease expiry (ms, Redis's clock)
    J:owners   hash  batch number -> the worker holding it
    J:meta     hash  total_docs, total_batches, done_docs, done_batches, created_at, stopped,
                     failed (why the job gave up: a batch kept failing), workers (of the last
                     start), finished_at

A claim (one Lua script) takes an expired lease first, else the next batch in the queue, and
leases it to the worker; finishing (another script) counts the batch only if the worker still
holds its lease. A worker killed at any moment therefore loses at most its leased batch, which
another worker takes once the lease expires; nothing is counted twice, and a restart resumes.
"""

from __future__ import annotations

import msgspec
import redis.asyncio as aioredis

from proxy.state.base import now
from proxy.state.client import unavailable_on_error

_CLAIM = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local batch = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now, 'LIMIT', 0, 1)[1]
if not batch then
  batch = redis.call('ZPOPMIN', KEYS[1])[1]
end
if not batch then return false end
redis.call('ZADD', KEYS[2], now + tonumber(ARGV[2]), batch)
redis.call('HSET', KEYS[3], batch, ARGV[1])
return {batch, redis.call('HGET', KEYS[4], batch)}
"""

_FINISH = """
if redis.call('HGET', KEYS[2], ARGV[2]) ~= ARGV[1] then return 0 end
redis.call('ZREM', KEYS[1], ARGV[2])
redis.call('HDEL', KEYS[2], ARGV[2])
redis.call('HINCRBY', KEYS[3], 'done_docs', ARGV[3])
redis.call('HINCRBY', KEYS[3], 'done_batches', 1)
return 1
"""


class Claim(msgspec.Struct, frozen=True):
    batch: int
    ids: list[int | str]


class JobStatus(msgspec.Struct, frozen=True, kw_only=True):
    exists: bool
    total_docs: int = 0
    total_batches: int = 0
    done_docs: int = 0
    done_batches: int = 0
    queued: int = 0
    leased: int = 0
    created_at: str = ""
    stopped: bool = False
    failed: str = ""  # why the workers gave up (empty while they have not)
    workers: int = 0  # how many the last start ran
    finished_at: str = ""  # when the last batch was done

    @property
    def finished(self) -> bool:
        return self.exists and self.queued == 0 and self.leased == 0


class BackfillQueue:
    """One alias's backfill into one version."""

    def __init__(self, client: aioredis.Redis, prefix: str, alias: str, version: str) -> None:
        self.client = client
        base = f"{prefix}:{{{alias}}}:backfill:{version}"
        self.keys = {k: f"{base}:{k}" for k in ("queue", "batches", "leases", "owners", "meta")}
        self._claim = client.register_script(_CLAIM)
        self._finish = client.register_script(_FINISH)

    async def create(self, batches: list[list[int | str]]) -> bool:
        """Queue ``batches`` in priority order, unless a job is already planned (then False:
        resume it). An empty plan records a finished job."""
        k = self.keys
        async with unavailable_on_error(self.client):
            if not await self.client.hsetnx(k["meta"], "created_at", now()):
                return False
            pipe = self.client.pipeline(transaction=True)
            pipe.hset(k["meta"], mapping={"total_docs": sum(map(len, batches)),
                                          "total_batches": len(batches), "done_docs": 0,
                                          "done_batches": 0})
            for number, ids in enumerate(batches):
                pipe.hset(k["batches"], str(number), msgspec.json.encode(ids))
            if batches:
                pipe.zadd(k["queue"], {str(n): n for n in range(len(batches))})
            await pipe.execute()
        return True

    async def claim(self, worker: str, lease_s: float) -> Claim | None:
        k = self.keys
        async with unavailable_on_error(self.client):
            found = await self._claim(keys=[k["queue"], k["leases"], k["owners"], k["batches"]],
                                      args=[worker, int(lease_s * 1000)])
        if not found:
            return None
        batch, ids = found
        return Claim(int(batch), msgspec.json.decode(ids, type=list[int | str]))

    async def finish(self, worker: str, claim: Claim, documents: int) -> bool:
        """Count the batch done if ``worker`` still holds it; False if its lease was lost."""
        k = self.keys
        async with unavailable_on_error(self.client):
            done = await self._finish(keys=[k["leases"], k["owners"], k["meta"]],
                                      args=[worker, str(claim.batch), documents])
        return bool(done)

    async def status(self) -> JobStatus:
        k = self.keys
        async with unavailable_on_error(self.client):
            pipe = self.client.pipeline(transaction=True)
            pipe.hgetall(k["meta"])
            pipe.zcard(k["queue"])
            pipe.zcard(k["leases"])
            meta, queued, leased = await pipe.execute()
        if not meta:
            return JobStatus(exists=False)
        fields = {_text(key): _text(value) for key, value in meta.items()}
        return JobStatus(exists=True, total_docs=int(fields.get("total_docs", 0)),
                         total_batches=int(fields.get("total_batches", 0)),
                         done_docs=int(fields.get("done_docs", 0)),
                         done_batches=int(fields.get("done_batches", 0)),
                         queued=int(queued), leased=int(leased),
                         created_at=fields.get("created_at", ""),
                         stopped="stopped" in fields, failed=fields.get("failed", ""),
                         workers=int(fields.get("workers", 0)),
                         finished_at=fields.get("finished_at", ""))

    async def set_stopped(self) -> None:
        """Mark the job stopped (``set_started`` runs it again)."""
        async with unavailable_on_error(self.client):
            await self.client.hset(self.keys["meta"], "stopped", "1")

    async def set_started(self, workers: int) -> None:
        """Running again with ``workers`` (which forgets a stop and why it failed)."""
        async with unavailable_on_error(self.client):
            pipe = self.client.pipeline(transaction=True)
            pipe.hdel(self.keys["meta"], "stopped", "failed")
            pipe.hset(self.keys["meta"], "workers", workers)
            await pipe.execute()

    async def set_finished(self) -> None:
        """The last batch is done (the first worker to see it says when)."""
        async with unavailable_on_error(self.client):
            await self.client.hsetnx(self.keys["meta"], "finished_at", now())

    async def set_failed(self, error: str) -> None:
        """The workers gave up: a batch kept failing with ``error``."""
        async with unavailable_on_error(self.client):
            await self.client.hset(self.keys["meta"], mapping={"failed": error, "stopped": "1"})

    async def clear(self) -> None:
        """Forget the job (a finished one, before planning the next)."""
        async with unavailable_on_error(self.client):
            await self.client.delete(*self.keys.values())


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
