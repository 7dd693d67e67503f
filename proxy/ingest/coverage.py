"""Coverage accounting: how much of stable each active version holds, counted from the
collections, by documents and weighted by what users are answered (the most-answered documents
the proxy recorded), and recorded for every proxy's gate. The writer records it after each
write, the backfill after its batches (spaced by their cost); reading progress only counts."""

from __future__ import annotations

from collections.abc import Sequence

import msgspec

from proxy.ingest.documents import point_id
from proxy.state.base import Accounts
from proxy.vectors.base import VectorStore, id_of_key
from rollout_rules.model import Rollout, Version, active_versions

POPULAR_SAMPLE = 1000  # the most-answered documents the popularity-weighted share is read over


class Coverage(msgspec.Struct, frozen=True, kw_only=True):
    version: str
    covered: int
    total: int
    popular: float | None  # None until the proxy has recorded answers


class Accounting:
    """Counts coverage from the vector store and records it in the rule store's accounts."""

    def __init__(self, store: VectorStore, accounts: Accounts) -> None:
        self.store, self.accounts = store, accounts

    async def update(self, rollout: Rollout) -> list[Coverage]:
        """Count every active version against stable and record it; only a figure that differs
        from the recorded one is written (and announced to every proxy), so polling progress
        does not make every proxy re-read its coverage."""
        figures = await self.count(rollout)
        recorded = (await self.accounts.coverage(rollout.alias),
                    await self.accounts.coverage(rollout.alias, "popularity"))
        for c in figures:
            if not _recorded(recorded, c.version, c.covered, c.total, c.popular):
                await self.accounts.set_coverage(rollout.alias, c.version, c.covered, c.total,
                                                 c.popular)
        return figures

    async def count(self, rollout: Rollout) -> list[Coverage]:
        """Every active version counted against stable, from the collections; records
        nothing (reading progress, or timing what a backfill batch costs)."""
        stable = rollout.version(rollout.stable)
        total = await self._count(stable)
        answered = await self.accounts.most_popular(rollout.alias, POPULAR_SAMPLE)  # read once
        figures = []
        for version in active_versions(rollout):
            covered = total if version.name == stable.name else \
                min(total, await self._count(version))
            popular = await self.popular_share(rollout, version, answered)
            figures.append(Coverage(version=version.name, covered=covered, total=total,
                                    popular=popular))
        return figures

    async def _count(self, version: Version) -> int:
        if await self.store.describe(version.target) is None:
            return 0
        return await self.store.count(version.target)

    async def popular_share(self, rollout: Rollout, version: Version,
                            popular: Sequence[tuple[str, float]]) -> float | None:
        """The share of answer hits, over the most-answered documents (``popular``), that
        ``version`` holds; None when no answers were recorded."""
        weight = sum(score for _, score in popular)
        if not popular or weight <= 0:
            return None
        stable = rollout.version(rollout.stable)
        if version.name == stable.name:
            return 1.0
        if await self.store.describe(version.target) is None:
            return 0.0
        points = {key: point_id(doc, version) for key, _ in popular
                  if (doc := id_of_key(key)) is not None}
        held = {p.id for p in await self.store.retrieve(version.target,
                                                        list(points.values()), [])}
        covered = sum(score for key, score in popular if points.get(key) in held)
        return covered / weight


def _recorded(recorded: tuple[dict[str, float], dict[str, float]], version: str, covered: int,
              total: int, popular: float | None) -> bool:
    """Whether the store already holds these figures (by documents and by popularity, the
    latter kept in parts per million)."""
    by_documents, by_popularity = recorded
    if version not in by_documents or not total:
        return False
    fraction = min(1.0, covered / total)
    expected = fraction if popular is None else min(1.0, max(0.0, popular))
    return abs(by_documents[version] - fraction) < 1e-12 and \
        abs(by_popularity.get(version, -1.0) - expected) <= 1e-6
