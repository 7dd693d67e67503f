"""Collections no alias declares: the application's own, passed through to the engine.

An application may keep (or start) its collections here before any rollout: create, upsert its
own vectors, query, retrieve, scroll, count and delete as in Qdrant. Nothing is routed or
encoded (there is no model: a ``Document`` is refused). A collection that holds a version of a
declared alias is never reachable this way: it is searched through its alias, which keeps
embedshift's envelope (the source text) out of every answer.
"""

from __future__ import annotations

from proxy.qdrant_api.shapes import Ask, Incoming, is_uuid, stage_vectors
from proxy.serving.search import Searcher
from proxy.vectors.base import (
    UNRECORDED_MODEL,
    Hit,
    Named,
    Nearest,
    PointIn,
    Sparse,
    Stage,
    Text,
    VectorsConfig,
    parse_filter,
)
from rollout_rules.errors import FeatureOff, NotFoundError, RuleError
from rollout_rules.model import Target, Version


class Plain:
    """One collection of the application's, as a version without a model: its vectors as it
    created them (dense and sparse, by name)."""

    def __init__(self, searcher: Searcher, version: Version, config: VectorsConfig) -> None:
        self.searcher, self.version, self.config = searcher, version, config

    @property
    def target(self) -> Target:
        return self.version.target

    async def hits(self, ask: Ask) -> list[Hit]:
        stage = ask.stage
        if stage is None:
            if ask.vector is None:
                raise RuleError("query", f"collection {self.target.collection} has no model "
                                         "to encode text with: send a vector, or declare an "
                                         "alias")
            stage = Stage(Nearest("", ask.vector), ask.window, filter=parse_filter(ask.filter),
                          score_threshold=ask.score_threshold)
        for name, vector in stage_vectors(stage):
            self._check(name, vector, "query" if ask.stage is None else "using", "vector")
        if not stage.prefetch and isinstance(stage.query, Nearest) and \
                stage.query.using == "" and self.config.single:  # the plain search
            assert isinstance(stage.query.vector, list)
            return await self.searcher.store.search(self.target, stage.query.vector,
                                                    stage.limit, stage.filter,
                                                    ask.payload.wanted)
        return await self.searcher.store.query(self.target, stage, ask.payload.wanted)

    def _check(self, name: str, vector: Named | Text, field: str, size_field: str = "") -> None:
        """RuleError unless the collection has a vector ``name`` of this kind and size."""
        where = repr(name) if name else "unnamed"
        if isinstance(vector, Text):
            raise RuleError("query", f"collection {self.target.collection} has no model to "
                                     "encode text with: send a vector, or declare an alias")
        if isinstance(vector, Sparse):
            if name not in self.config.sparse:
                raise RuleError(field, f"collection {self.target.collection} has no sparse "
                                       f"vector {where}{self._held()}")
            return
        spec = self.config.dense.get(name)
        if spec is None:
            raise RuleError(field, f"collection {self.target.collection} has no dense vector "
                                   f"{where}{self._held()}")
        if len(vector) != spec[0]:
            raise RuleError(size_field or field, f"has {len(vector)} numbers; collection "
                                      f"{self.target.collection}'s {where} vector holds "
                                      f"{spec[0]}")

    def _held(self) -> str:
        names = [repr(n) if n else "the unnamed one" for n in (*self.config.dense,
                                                              *self.config.sparse)]
        return f" (it has {', '.join(names) or 'none'})"

    async def upsert(self, points: list[Incoming]) -> None:
        for n, point in enumerate(points):
            if point.vector is None and not point.named:
                raise RuleError(f"points[{n}].vector", f"collection {self.target.collection} "
                                "has no model to encode text with: send a vector")
            if point.vector is not None:
                self._check("", point.vector, f"points[{n}].vector")
            for name, vector in point.named.items():
                self._check(name, vector, f"points[{n}].vector.{name}")
            if isinstance(point.id, str) and not is_uuid(point.id):
                raise RuleError(f"points[{n}].id", "a point id is an unsigned integer or a "
                                "UUID, as in Qdrant")
        await self.searcher.store.upsert(self.target, [
            PointIn(p.id, p.vector or [], p.payload, dict(p.named)) for p in points])


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
    config = info.config or VectorsConfig(dense={"": (info.dimensions, info.metric)},
                                          single=True)
    size, metric = config.dense.get("", next(iter(config.dense.values()), (1, "dot")))
    return Plain(searcher, plain_version(name, size, metric), config)


def plain_version(name: str, dimensions: int, metric: str) -> Version:
    """The application's collection as a version: its unnamed dense vector's size and metric
    (else its first dense one's; a collection of sparse vectors alone scores as a dot)."""
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
