"""The vectors the proxy handed out, and the version whose model made each.

An application that embeds its text through ``POST /v1/embeddings`` sends the vector back as a
query; a vector carries no sign of the model that made it, so the proxy remembers a fingerprint
of every vector it hands out (``fingerprint``: a hash of its float32 bytes) with the version that
made it, for ``ttl_s``, shared by every proxy through Redis (``RedisHandedOut``); the query that
follows is searched in that version's collection even if the rule moved in between, on any
instance. ``MemoryHandedOut`` is the fake, for one process.
"""

from __future__ import annotations

import hashlib
import struct
import time
from collections.abc import Sequence
from typing import Protocol

from redis import asyncio as aioredis

from proxy.state.client import unavailable_on_error


def fingerprint(vector: Sequence[float]) -> str:
    """The same for a vector and its JSON or base64 round trip (compared as float32)."""
    packed = struct.pack(f"<{len(vector)}f", *vector)
    return hashlib.blake2b(packed, digest_size=16).hexdigest()


class HandedOut(Protocol):
    async def remember(self, alias: str, version: str, fingerprints: Sequence[str],
                       ttl_s: float) -> None: ...

    async def recall(self, alias: str, fingerprint: str) -> str | None:
        """The version that made the vector, if this alias handed it out and remembers."""
        ...


class RedisHandedOut:
    def __init__(self, client: aioredis.Redis, prefix: str) -> None:
        self.client, self.prefix = client, prefix

    def _key(self, alias: str, fingerprint: str) -> str:
        return f"{self.prefix}:{{{alias}}}:handed:{fingerprint}"

    async def remember(self, alias: str, version: str, fingerprints: Sequence[str],
                       ttl_s: float) -> None:
        async with unavailable_on_error(self.client), \
                self.client.pipeline(transaction=False) as pipe:
            for one in fingerprints:
                pipe.set(self._key(alias, one), version, px=max(1, int(ttl_s * 1000)))
            await pipe.execute()

    async def recall(self, alias: str, fingerprint: str) -> str | None:
        async with unavailable_on_error(self.client):
            found = await self.client.get(self._key(alias, fingerprint))
        return found.decode() if isinstance(found, bytes) else found


class MemoryHandedOut:
    def __init__(self) -> None:
        self._kept: dict[tuple[str, str], tuple[str, float]] = {}

    async def remember(self, alias: str, version: str, fingerprints: Sequence[str],
                       ttl_s: float) -> None:
        until = time.monotonic() + ttl_s
        for one in fingerprints:
            self._kept[(alias, one)] = (version, until)

    async def recall(self, alias: str, fingerprint: str) -> str | None:
        version, until = self._kept.get((alias, fingerprint), (None, 0.0))
        return version if time.monotonic() < until else None
