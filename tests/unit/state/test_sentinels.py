"""Concurrent discoveries of the primary keep every sentinel in the list, each once.

After a failover every connection asks the sentinels at once while the first one asked does not
name a primary yet; redis-py's own ``discover_master`` moves the one that answered to the front
with a swap across an await, and two at once drop a sentinel for good.
"""

from __future__ import annotations

import asyncio
from typing import Any

from redis.asyncio.sentinel import Sentinel

from proxy.state.client import Sentinels

PRIMARY = {"ip": "10.0.0.2", "port": 6379, "is_master": True, "is_sdown": False,
           "is_odown": False, "num-other-sentinels": 2}


class Node:
    """A sentinel that names the primary, or (still deciding) names none."""

    def __init__(self, name: str, names_primary: bool) -> None:
        self.name, self.names_primary = name, names_primary

    async def sentinel_masters(self) -> dict[str, Any]:
        await asyncio.sleep(0)  # a round trip: the other discoveries run meanwhile
        return {"rules": PRIMARY} if self.names_primary else {}

    def __repr__(self) -> str:
        return self.name


async def _discover_at_once(manager: Sentinel) -> list[str]:
    nodes: list[Any] = [Node("s0", False), Node("s1", True), Node("s2", True)]
    manager.sentinels = nodes
    found = await asyncio.gather(*(manager.discover_master("rules") for _ in range(4)))
    assert set(found) == {("10.0.0.2", 6379)}
    return [repr(node) for node in manager.sentinels]


async def test_every_sentinel_stays_in_the_list_once() -> None:
    after = await _discover_at_once(Sentinels([("127.0.0.1", 1)]))
    assert sorted(after) == ["s0", "s1", "s2"] and after[0] == "s1"


async def test_redis_pys_own_discovery_loses_one_which_is_why_sentinels_exists() -> None:
    """When this fails, redis-py has mended its swap and ``Sentinels`` can go."""
    after = await _discover_at_once(Sentinel([("127.0.0.1", 1)]))  # type: ignore[no-untyped-call]
    assert "s0" not in after and len(after) == 3
