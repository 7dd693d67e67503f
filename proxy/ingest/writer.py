"""Ingestion with dual-write.

``Ingestor.write`` encodes a batch of documents with the encoder of **every** active version
(stable, candidate, and the previous stable kept for rollback) and writes each version's points,
creating its collection on first use. A version that fails is reported per document and can be
retried (writing again replaces); a document is covered in a version only once its point is
there, because coverage is counted from the store, never added up (``proxy.ingest.coverage``,
which every write asks to record what it left): nothing half-written or written twice is ever
counted.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Any, Literal, Protocol

import msgspec
import numpy as np
import structlog
from numpy.typing import NDArray
from qdrant_client import models

from proxy.http import public_message
from proxy.ingest.coverage import Accounting
from proxy.ingest.documents import (
    DocId,
    Document,
    VectorPoint,
    point_id,
    point_payload,
    vector_payload,
)
from proxy.models.encoders import RemoteModel, TextModel, embed_off_loop
from proxy.state.base import RuleStore
from proxy.vectors.base import RESERVED, Named, PointId, PointIn, VectorStore
from rollout_rules.errors import BackendError, DocumentNotFound, ModelError, RuleError
from rollout_rules.model import Carried, Rollout, Target, Version, active_versions

log = structlog.get_logger("embedshift.ingest")


class Models(Protocol):
    async def get(self, version: Version) -> TextModel: ...


class DocumentResult(msgspec.Struct, frozen=True, kw_only=True):
    id: DocId
    written: list[str]  # versions that hold the document now
    failed: dict[str, str] = msgspec.field(default_factory=dict)  # version: why not


def stable_target(rollout: Rollout) -> Target:
    """Where stable's points are: the collection whose settings a new version's takes."""
    return rollout.version(rollout.stable).target


async def encode(model: TextModel, texts: Sequence[str], live: bool = False
                 ) -> NDArray[np.float32]:
    """Documents' vectors, off the event loop (the model is shared with the request path; a
    served model's calls leave live queries their share of the service). ``live``: a caller
    waits for the answer (a write through the API), so a served model gives up as quickly as
    for a query; only bulk work (the backfill, a CLI ingest's batches) waits out an outage."""
    if live and isinstance(model, RemoteModel):
        return await model.aembed(texts, live=True)
    return await embed_off_loop(model, texts, live=False)


class PayloadChange(msgspec.Struct, frozen=True, kw_only=True):
    """What an application asks of its points' payloads: ``set`` keys, ``overwrite`` the
    payload (its own part), ``delete`` keys, or ``clear`` it; by document ids or a filter."""

    kind: Literal["set", "overwrite", "delete", "clear"]
    payload: dict[str, Any] = msgspec.field(default_factory=dict)
    keys: tuple[str, ...] = ()
    ids: tuple[DocId, ...] | None = None
    filter: models.Filter | None = None


async def held(store: VectorStore, target: Target, ids: Sequence[PointId]) -> set[PointId]:
    """Which of ``ids`` the collection holds (the engine refuses a change to a missing point)."""
    return {point.id for point in await store.retrieve(target, list(ids), [])}


async def apply_payload_change(store: VectorStore, target: Target, change: PayloadChange,
                               ids: list[PointId] | None, protected: set[str]) -> None:
    """One version's (or one plain collection's) share of a payload change, to the points it
    holds. Overwrite and clear are by id: they remove the application's other keys, never
    ``protected`` ones."""
    if ids is not None:
        present = await held(store, target, ids)
        ids = [point for point in ids if point in present]
        if not ids:
            return
    where = {"ids": ids} if ids is not None else {"query_filter": change.filter}
    if change.kind in ("overwrite", "clear"):
        if ids is None:
            raise RuleError("filter", f"{change.kind} names its points by id")
        stored = await store.retrieve(target, ids)
        stale = {key for point in stored for key in point.payload} - protected
        if change.kind == "overwrite":
            stale -= set(change.payload)
        if stale:
            await store.delete_payload(target, sorted(stale), ids=ids)
    if change.kind == "delete":
        await store.delete_payload(target, list(change.keys), **where)
    elif change.payload:
        await store.set_payload(target, change.payload, **where)


class Ingestor:
    def __init__(self, store: VectorStore, rules: RuleStore, models: Models) -> None:
        self.store, self.rules, self.models = store, rules, models
        self.accounting = Accounting(store, rules)  # what every write leaves covered
        self._ready: set[tuple[str, str]] = set()  # (collection, version) known to exist
        self._creating = asyncio.Lock()

    async def write(self, rollout: Rollout, documents: Sequence[Document],
                    versions: Sequence[Version] | None = None, live: bool = False,
                    named: Mapping[DocId, Mapping[str, Named]] | None = None
                    ) -> list[DocumentResult]:
        """Write ``documents`` into every active version (or ``versions``); per document, which
        versions hold it and why the others do not. ``live``: a caller waits (see ``encode``);
        ``named``: each document's carried vectors, written into every version as given."""
        written: dict[DocId, list[str]] = {d.id: [] for d in documents}
        failed: dict[DocId, dict[str, str]] = {d.id: {} for d in documents}
        for version in versions if versions is not None else active_versions(rollout):
            try:
                await self.write_version(version, documents, rollout.versions,
                                         like=stable_target(rollout), live=live,
                                         carried=rollout.carried, named=named)
            except (BackendError, ModelError) as exc:
                log.warning("ingest_failed", alias=rollout.alias, version=version.name,
                            documents=len(documents), error=str(exc))
                then = ("stable holds no copy: send it again" if version.name == rollout.stable
                        else "the backfill writes it from stable's copy")
                for d in documents:
                    failed[d.id][version.name] = f"{public_message(exc)} ({then})"
                continue
            for d in documents:
                written[d.id].append(version.name)
        await self.accounting.update(rollout)
        return [DocumentResult(id=d.id, written=written[d.id], failed=failed[d.id])
                for d in documents]

    async def write_vectors(self, rollout: Rollout, points: Sequence[VectorPoint],
                            named: Mapping[DocId, Mapping[str, Named]] | None = None) -> str:
        """Points whose writer made their vectors, into stable's collection (the space a vector
        with no sign of its model is taken to be in, as for queries); the other versions' copies
        of those documents are removed, so the backfill re-encodes them from the text the
        payload holds. The version written; RuleError when a vector does not fit it."""
        version = rollout.version(rollout.stable)
        for n, point in enumerate(points):
            if len(point.vector) != version.dimensions:
                raise RuleError(f"points[{n}].vector", f"has {len(point.vector)} numbers; "
                                f"{rollout.alias}'s stable version {version.name} "
                                f"({version.model}) has {version.dimensions}")
        await self.ensure(version, rollout.versions, carried=rollout.carried)
        carried = named or {}
        await self.store.upsert(version.target, [
            PointIn(point_id(p.id, version), p.vector, vector_payload(p, version),
                    dict(carried.get(p.id, {}))) for p in points])
        for other in active_versions(rollout):
            if other.name != version.name and await self.store.describe(other.target):
                await self.store.delete(other.target, [point_id(p.id, other) for p in points])
        await self.accounting.update(rollout)
        return version.name

    async def write_version(self, version: Version, documents: Sequence[Document],
                            siblings: Sequence[Version] = (), like: Target | None = None, *,
                            live: bool = False, carried: Mapping[str, Carried] | None = None,
                            named: Mapping[DocId, Mapping[str, Named]] | None = None) -> None:
        """Encode and upsert into one version; raises on failure (nothing is counted then).
        ``siblings``: the rule's other versions, whose vectors a collection they share with
        this one is created with; ``like``: the collection whose settings a new one takes;
        ``carried``: the rule's carried vectors, which a new collection declares, and
        ``named``: each document's values of them."""
        if not documents:
            return
        model = await self.models.get(version)
        await self.ensure(version, siblings, like, carried)  # first: a failure wastes no encode
        vectors = await encode(model, [d.text for d in documents], live)
        given = named or {}
        await self.store.upsert(version.target, [
            PointIn(point_id(d.id, version), vector.tolist(), point_payload(d, version),
                    dict(given.get(d.id, {})))
            for d, vector in zip(documents, vectors, strict=True)])

    async def ensure(self, version: Version, siblings: Sequence[Version] = (),
                     like: Target | None = None,
                     carried: Mapping[str, Carried] | None = None) -> None:
        """The version's collection, created if need be with ``like``'s settings (stable's
        collection: a candidate must not lose its replicas or quantization)."""
        key = (version.target.collection, version.name)
        if key in self._ready:
            return
        async with self._creating:  # concurrent first writes create it once
            if key not in self._ready:
                others = [v for v in siblings if v.name != version.name]
                await self.store.ensure_collection(version.target, version, others, like,
                                                   carried)
                self._ready.add(key)

    def forget(self, version: Version) -> None:
        """The version's collection was dropped: the next write creates it again."""
        self._ready.discard((version.target.collection, version.name))

    async def delete(self, rollout: Rollout, doc_id: DocId) -> list[str]:
        """Remove a document from every declared version that holds it; the names of those
        versions. DocumentNotFound when none does (nothing is removed then)."""
        removed = []
        for version in rollout.versions:
            if await self.store.describe(version.target) is None:
                continue
            point = point_id(doc_id, version)
            if not await self.store.retrieve(version.target, [point], []):
                continue
            await self.store.delete(version.target, [point])
            removed.append(version.name)
        if not removed:
            raise DocumentNotFound(rollout.alias, doc_id)
        await self.accounting.update(rollout)
        return removed

    async def delete_where(self, rollout: Rollout, query_filter: models.Filter) -> list[str]:
        """Remove the documents matching ``query_filter`` (on the application's payload) from
        every declared version; the versions it ran in."""
        ran = []
        for version in rollout.versions:
            if await self.store.describe(version.target) is not None:
                await self.store.delete_where(version.target, query_filter)
                ran.append(version.name)
        await self.accounting.update(rollout)
        return ran

    async def update_payload(self, rollout: Rollout, change: PayloadChange) -> list[str]:
        """Apply an application's payload change in every declared version that exists (its
        documents by id, or those matching a filter on its payload); embedshift's envelope and
        a shared layout's match keys are never touched. The versions it ran in."""
        written = [v for v in rollout.versions if await self.store.describe(v.target)]
        for version in written:
            touched = set(change.payload) | set(change.keys)
            protected = {RESERVED, *version.target.payload_match}
            if touched & protected:
                raise RuleError("payload", f"{sorted(touched & protected)[0]} is embedshift's "
                                           "own and cannot be changed")
        if change.ids is not None:  # every id is held somewhere, or nothing changes (as Qdrant)
            await self._refuse_unheld(rollout.alias, written, list(change.ids))
        for version in written:
            ids = (None if change.ids is None
                   else [point_id(doc_id, version) for doc_id in change.ids])
            await apply_payload_change(self.store, version.target, change, ids,
                                       {RESERVED, *version.target.payload_match})
        return [version.name for version in written]

    async def _refuse_unheld(self, alias: str, versions: Sequence[Version],
                             doc_ids: list[DocId]) -> None:
        """DocumentNotFound for the first of ``doc_ids`` that no version holds."""
        missing = list(doc_ids)
        for version in versions:
            present = await held(self.store, version.target,
                                 [point_id(doc_id, version) for doc_id in missing])
            missing = [d for d in missing if point_id(d, version) not in present]
        if missing:
            raise DocumentNotFound(alias, missing[0])
