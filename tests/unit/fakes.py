"""A proxy's world made of the in-package fakes: rules in memory, vectors in memory, hash encoders.

The rollout is ``tests.unit.core.rollouts.rollout()`` (v1 = ``m/l3`` in ``p_v1``, v2 = ``m/l6``
in ``p_v2``, 384-d); each collection holds the same small catalogue encoded by its own fake model.
"""

from __future__ import annotations

from typing import Any

from proxy.models.fake import HashModel
from proxy.models.loader import ModelCache
from proxy.vectors.base import Hit, PointIn, VectorLike
from proxy.vectors.memory import MemoryStore
from rollout_rules.errors import BackendError, ModelError
from rollout_rules.model import Rollout, Target, Version

CATALOGUE = ["warm winter jacket", "rain jacket for downpours", "camp stove that boils water",
             "ultralight tent for two", "sleeping bag for freezing nights", "trail running shoes"]


def fake_models(unloadable: str | None = None) -> ModelCache:
    """Each version's model is a HashModel named after its model id (so v1 and v2 differ);
    the model id ``unloadable`` cannot be loaded, as a typo in a path cannot."""
    def load(version: Version) -> HashModel:
        if version.model == unloadable:
            raise ModelError(f"model {unloadable} is not a folder and not in the catalogue")
        return HashModel(version.model, version.dimensions)

    return ModelCache(models_dir=None, load=load)  # type: ignore[arg-type]  # loads no folder


class BreakableStore(MemoryStore):
    """The in-memory store, with searches in chosen collections made to fail on demand."""

    def __init__(self) -> None:
        super().__init__()
        self.broken: set[str] = set()

    async def search(self, target: Target, vector: VectorLike, limit: int, query_filter: Any,
                     with_payload: bool) -> list[Hit]:
        if target.collection in self.broken:
            raise BackendError(f"injected failure in {target.collection}")
        return await super().search(target, vector, limit, query_filter, with_payload)


async def load_catalogue(store: MemoryStore, rollout: Rollout) -> None:
    for version in rollout.versions:
        model = HashModel(version.model, version.dimensions)
        await store.ensure_collection(version.target, version)
        vectors = model.embed(CATALOGUE)
        await store.upsert(version.target, [
            PointIn(i, vectors[i].tolist(), {"text": text}) for i, text in enumerate(CATALOGUE)])
