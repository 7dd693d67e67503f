"""Collections no alias declares: the application's own, passed through to the engine.

An application may keep (or start) its collections here before any rollout: create, upsert its
own vectors, query, retrieve, scroll, count and delete as in Qdrant. Nothing is routed or
encoded (there is no model: a ``Document`` is refused). A collection that holds a version of a
declared alias is never reachable this way: it is searched through its alias, which keeps
embedshift's envelope (the source text) out of every answer.
"""

from __future__ import annotations

from proxy.qdrant_api.shapes import Ask, Incoming, is_uuid
from proxy.serving.search import Searcher
from proxy.vectors.base import UNRECORDED_MODEL, Hit, PointIn, parse_filter
from rollout_rules.errors import FeatureOff, NotFoundError, RuleError
from rollout_rules.model import Target, Version


class Plain:
    """One collection of the application's, as a version without a model."""

    def __init__(self, searcher: Searcher, version: Version) -> None:
        self.searcher, self.version = searcher, version

    @property
    def target(self) -> Target:
        return self.version.target

    async def hits(self, ask: Ask) -> list[Hit]:
        if ask.vector is None:
            raise RuleError("query", f"collection {self.target.collection} has no model to "
                                     "encode text with: send a vector, or declare an alias")
        if len(ask.vector) != self.version.dimensions:
            raise RuleError("vector", f"has {len(ask.vector)} numbers; collection "
                                      f"{self.target.collection} holds "
                                      f"{self.version.dimensions}")
        return await self.searcher.store.search(self.target, ask.vector, ask.window,
                                                parse_filter(ask.filter), ask.payload.wanted)

    async def upsert(self, points: list[Incoming]) -> None:
        for n, point in enumerate(points):
            if point.vector is None:
                raise RuleError(f"points[{n}].vector", f"collection {self.target.collection} "
                                "has no model to encode text with: send a vector")
            if len(point.vector) != self.version.dimensions:
                raise RuleError(f"points[{n}].vector", f"has {len(point.vector)} numbers; "
                                f"the collection holds {self.version.dimensions}")
            if isinstance(point.id, str) and not is_uuid(point.id):
                raise RuleError(f"points[{n}].id", "a point id is an unsigned integer or a "
                                "UUID, as in Qdrant")
        await self.searcher.store.upsert(self.target, [
            PointIn(p.id, p.vector or [], p.payload) for p in points])


async def plain(searcher: Searcher, name: str) -> Plain | None:
    """The application's collection ``name``; None when an alias of that name is declared.
    NotFoundError when neither exists; FeatureOff when it holds a declared alias's version."""
    rollouts = searcher.rules.rollouts
    if name in rollouts:
        return None
    refuse_version_collection(searcher, name)
    info = await searcher.store.describe(Target(collection=name))
    if info is None:
        raise NotFoundError(name, "no alias or collection of that name: create the collection, "
                                  "or declare the alias")
    return Plain(searcher, plain_version(name, info.dimensions, info.metric))


def plain_version(name: str, dimensions: int, metric: str) -> Version:
    return Version(name="plain", model=UNRECORDED_MODEL, dimensions=dimensions,
                   metric=metric,  # type: ignore[arg-type]
                   target=Target(collection=name))


def refuse_version_collection(searcher: Searcher, name: str) -> None:
    for rollout in searcher.rules.rollouts.values():
        for version in rollout.versions:
            if version.target.collection == name:
                raise FeatureOff(f"collection {name} holds version {version.name} of alias "
                                 f"{rollout.alias}: search it through the alias "
                                 f"{rollout.alias}")


def version_collections(searcher: Searcher) -> set[str]:
    return {v.target.collection for r in searcher.rules.rollouts.values() for v in r.versions}
