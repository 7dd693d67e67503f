"""A served model's rate limits and circuit, shared through Redis by every process that calls it.

Each budget (a model's requests or tokens per minute) is one token bucket in Redis, refilled
continuously and taken from by one script, on the server's clock: three proxies and a backfill
together stay inside what the service allows, where each process's own bucket would have let
each spend all of it. A circuit one process opened is a key that expires when it would close:
the others hold back too rather than each learning the outage by failing five times.
"""

from __future__ import annotations

from typing import cast

from redis import asyncio as aioredis

from proxy.state.client import unavailable_on_error

TAKE = """
local per_minute, amount, keep = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
local held = redis.call('HMGET', KEYS[1], 'level', 'updated')
local level, updated = tonumber(held[1]) or per_minute, tonumber(held[2]) or now
local rate = per_minute / 60000
level = math.min(per_minute, level + math.max(0, now - updated) * rate)
amount = math.min(amount, per_minute * (1 - keep))
local floor = per_minute * keep
local wait_ms = 0
if level - amount >= floor then
  level = level - amount
else
  wait_ms = (floor + amount - level) / rate
end
redis.call('HSET', KEYS[1], 'level', tostring(level), 'updated', tostring(now))
redis.call('PEXPIRE', KEYS[1], 120000)
return tostring(wait_ms)
"""


class RedisLimits:
    def __init__(self, client: aioredis.Redis, prefix: str) -> None:
        self.client, self.prefix = client, prefix
        self._take = client.register_script(TAKE)

    def _key(self, model: str, what: str) -> str:
        return f"{self.prefix}:served:{{{model}}}:{what}"

    async def take(self, model: str, kind: str, amount: float, per_minute: float,
                   keep: float) -> float:
        if per_minute <= 0:
            return 0.0
        async with unavailable_on_error(self.client):
            wait_ms = await self._take(keys=[self._key(model, kind)],
                                       args=[per_minute, amount, keep])
        return float(cast(bytes | str, wait_ms)) / 1000

    async def trip(self, model: str, seconds: float) -> None:
        async with unavailable_on_error(self.client):
            await self.client.set(self._key(model, "circuit"), "open",
                                  px=max(1, int(seconds * 1000)))

    async def tripped(self, model: str) -> float:
        async with unavailable_on_error(self.client):
            left_ms = await self.client.pttl(self._key(model, "circuit"))
        return max(0.0, left_ms / 1000)
