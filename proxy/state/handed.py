"""The vectors the proxy handed out, and the version whose model made each.

An application that embeds its text through ``POST /v1/embeddings`` sends the vector back as a
query; a vector carries no sign of the model that made it, so the proxy remembers a fingerprint
of every vector it hands out (``fingerprint``: a hash of its float32 bytes) with the version that
made it, for ``ttl_s``, shared by every proxy through Redis (``RedisHandedOut``); the query that
follows is searched in that version's collection even if the rule moved in between, on any
instance. ``MemoryHandedOut`` is the fake, for one process.

What is remembered has a budget of its own: at most ``cap`` fingerprints per alias (about
``ENTRY_BYTES`` each in Redis), the oldest dropped first (``remember`` says how many), so
anonymous callers cannot grow the store that holds the rules. A vector whose fingerprint was
dropped is searched in stable's space, as any vector this proxy did not hand out.
"""

from __future__ import annotations

import hashlib
import struct
import time
from collections import OrderedDict
from collections.abc import Sequence
from typing import Protocol, cast

from redis import asyncio as aioredis

from proxy.state.client import unavailable_on_error


def fingerprint(vector: Sequence[float]) -> str:
    """The same for a vector and its JSON or base64 round trip (compared as float32)."""
    packed = struct.pack(f"<{len(vector)}f", *vector)
    return hashlib.blake2b(packed, digest_size=16).hexdigest()


ENTRY_BYTES = 240
"""A remembered fingerprint's cost in Redis (a hash field and a sorted-set member), measured."""
DEFAULT_CAP = 100_000


class HandedOut(Protocol):
    async def remember(self, alias: str, version: str, fingerprints: Sequence[str],
                       ttl_s: float) -> int:
        """Remember ``fingerprints``; how many older ones were dropped to stay in the cap."""
        ...

    async def recall(self, alias: str, fingerprint: str) -> str | None:
        """The version that made the vector, if this alias handed it out and remembers."""
        ...


REMEMBER = """
local versions, until_at = KEYS[1], KEYS[2]
local now, expires, cap, version = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4]
local keep_ms = tonumber(ARGV[5])
for i = 6, #ARGV do
  redis.call('HSET', versions, ARGV[i], version)
  redis.call('ZADD', until_at, expires, ARGV[i])
end
local function forget(members)
  for k = 1, #members, 500 do
    local part = {unpack(members, k, math.min(k + 499, #members))}
    redis.call('HDEL', versions, unpack(part))
    redis.call('ZREM', until_at, unpack(part))
  end
end
forget(redis.call('ZRANGEBYSCORE', until_at, '-inf', now, 'LIMIT', 0, 1000))
local over = redis.call('ZCARD', until_at) - cap
local dropped = {}
if over > 0 then
  local oldest = redis.call('ZRANGE', until_at, 0, over - 1)
  forget(oldest)
  dropped = oldest
end
redis.call('PEXPIRE', versions, keep_ms)
redis.call('PEXPIRE', until_at, keep_ms)
return #dropped
"""


class RedisHandedOut:
    """Per alias, a hash (fingerprint -> version) and a sorted set (fingerprint -> when it is
    forgotten), written together by one script that also drops the expired and the oldest past
    ``cap``; both expire whole once nothing is handed out for ``ttl_s``."""

    def __init__(self, client: aioredis.Redis, prefix: str, cap: int = DEFAULT_CAP) -> None:
        self.client, self.prefix, self.cap = client, prefix, cap
        self._remember = client.register_script(REMEMBER)

    def _keys(self, alias: str) -> list[str]:
        base = f"{self.prefix}:{{{alias}}}:handed"
        return [base, f"{base}:until"]

    async def remember(self, alias: str, version: str, fingerprints: Sequence[str],
                       ttl_s: float) -> int:
        now = int(time.time() * 1000)
        keep_ms = max(1, int(ttl_s * 1000))
        async with unavailable_on_error(self.client):
            dropped = await self._remember(keys=self._keys(alias), args=[
                now, now + keep_ms, self.cap, version, keep_ms, *fingerprints])
        return int(cast(int, dropped))

    async def recall(self, alias: str, fingerprint: str) -> str | None:
        versions, until_at = self._keys(alias)
        async with unavailable_on_error(self.client), \
                self.client.pipeline(transaction=False) as pipe:
            pipe.hget(versions, fingerprint)
            pipe.zscore(until_at, fingerprint)
            found, until = await pipe.execute()
        if found is None or until is None or until <= time.time() * 1000:
            return None
        return found.decode() if isinstance(found, bytes) else str(found)


class MemoryHandedOut:
    def __init__(self, cap: int = DEFAULT_CAP) -> None:
        self.cap = cap
        self._kept: dict[str, OrderedDict[str, tuple[str, float]]] = {}

    async def remember(self, alias: str, version: str, fingerprints: Sequence[str],
                       ttl_s: float) -> int:
        kept = self._kept.setdefault(alias, OrderedDict())
        until = time.monotonic() + ttl_s
        for one in fingerprints:
            kept.pop(one, None)
            kept[one] = (version, until)
        dropped = max(0, len(kept) - self.cap)
        for _ in range(dropped):
            kept.popitem(last=False)
        return dropped

    async def recall(self, alias: str, fingerprint: str) -> str | None:
        version, until = self._kept.get(alias, OrderedDict()).get(fingerprint, (None, 0.0))
        return version if time.monotonic() < until else None
