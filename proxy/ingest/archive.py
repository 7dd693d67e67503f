"""``archive``: export a retired version's points to a file, then delete them; ``unarchive``
brings the newest export back, searchable again.

An archive is gzip'd JSON lines under ``<data>/archives/<alias>/``: a header (the version's
envelope, the point count, when) and one line per point (point id, vector, payload with the
source text, and the document id it was written with). Files are the proxy user's alone (0600):
they hold every source text. It is the same file for Qdrant's embedded engine and a server, and
holds everything a rollback to that version needs. A version any rule still names (stable,
candidate, previous_stable, an override; or another alias's version on the same collection) is
refused. The newest ``keep`` archives of an alias are kept, older ones deleted.
"""

from __future__ import annotations

import asyncio
import gzip
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec

from proxy.ingest.documents import doc_id_of
from proxy.ingest.writer import Ingestor
from proxy.state.base import Rules, now
from proxy.vectors.base import PointId, PointIn, Stored, VectorStore, carried_of, scroll_all
from rollout_rules.errors import BackendError, NotFoundError, RuleError
from rollout_rules.model import Rollout, Version

BATCH = 256


class ArchiveInfo(msgspec.Struct, frozen=True, kw_only=True):
    alias: str
    version: str
    collection: str
    file: str
    points: int
    at: str
    removed: list[str] = msgspec.field(default_factory=list)  # older archives pruned


class _Header(msgspec.Struct, frozen=True, kw_only=True):
    embedshift_archive: int
    alias: str
    version: Version
    points: int
    at: str


class _Point(msgspec.Struct, frozen=True):
    id: int | str  # the engine's point id, as written back
    vector: list[float]
    payload: dict[str, Any]
    doc_id: int | str | None = None  # the id the document was written with (absent before)
    named: dict[str, Any] | None = None  # every vector by name, carried ones too (when several)


def references(rollout: Rollout, name: str) -> list[str]:
    """The fields of a rule that name version ``name`` (pure)."""
    found = [field for field, value in (("stable", rollout.stable),
                                        ("candidate", rollout.candidate),
                                        ("previous_stable", rollout.previous_stable))
             if value == name]
    found += [f"overrides.users.{u}" for u, v in rollout.overrides.users.items() if v == name]
    found += [f"overrides.tenants.{t}" for t, v in rollout.overrides.tenants.items()
              if v == name]
    return found


async def check_unreferenced(rules: Rules, rollout: Rollout, version: Version) -> None:
    named = references(rollout, version.name)
    if named:
        raise RuleError("version", f"{rollout.alias}'s rule still names {version.name} "
                                   f"({', '.join(named)}); archive it once nothing does "
                                   f"(a previous stable: `embedshift retire {rollout.alias}`)")
    for alias in await rules.aliases():
        if alias == rollout.alias:
            continue
        other = await rules.get(alias)
        if any(v.target.collection == version.target.collection for v in other.versions):
            raise RuleError("version", f"alias {alias} also declares collection "
                                       f"{version.target.collection}")


async def archive(ingestor: Ingestor, rollout: Rollout, name: str, folder: Path,
                  keep: int) -> ArchiveInfo:
    version = rollout.version(name)
    await check_unreferenced(ingestor.rules, rollout, version)
    store = ingestor.store
    if await store.describe(version.target) is None:
        raise NotFoundError(f"{rollout.alias}/{name}: collection {version.target.collection} "
                            "does not exist (archived already?)")
    at = now()
    path = folder / rollout.alias / f"{name}-{at.replace(':', '').replace('.', '-')}.jsonl.gz"
    count = await store.count(version.target)
    header = _Header(embedshift_archive=1, alias=rollout.alias, version=version, points=count,
                     at=at)
    ids = await _stream(store, version, path, header)
    if version.target.payload_match:  # a shared collection: only this version's points go
        for start in range(0, len(ids), BATCH):
            await store.delete(version.target, ids[start:start + BATCH])
        if version.target.vector_name and not any(
                (v.target.collection, v.target.vector_name) ==
                (version.target.collection, version.target.vector_name)
                for v in rollout.versions if v.name != name):
            await store.drop_vector(version.target)  # and its vector, which nobody else uses
    else:
        await store.drop(version.target)
        ingestor.forget(version)
    removed = await asyncio.to_thread(_prune, folder / rollout.alias, keep)
    return ArchiveInfo(alias=rollout.alias, version=name, collection=version.target.collection,
                       file=str(path), points=count, at=at, removed=removed)


async def _stream(store: VectorStore, version: Version, path: Path, header: _Header
                  ) -> list[PointId]:
    """Write the version's points to ``path`` page by page (a page in memory at a time; the
    file appears whole or not at all); the point ids, when its collection is shared (to delete
    them after)."""
    partial = await asyncio.to_thread(_open, path)
    ids: list[PointId] = []
    written = 0
    try:
        with gzip.open(partial, "ab") as out:
            await asyncio.to_thread(out.write, msgspec.json.encode(header) + b"\n")
            page: list[Stored] = []
            async for point in scroll_all(store, version.target, vectors=True):
                page.append(point)
                if len(page) == BATCH:
                    await asyncio.to_thread(_lines, out, page)
                    written, page = written + len(page), []
                if version.target.payload_match:
                    ids.append(point.id)
            await asyncio.to_thread(_lines, out, page)
            written += len(page)
        if written != header.points:
            raise BackendError(f"{version.target.collection} changed while it was archived "
                               f"({header.points} points counted, {written} read): nothing "
                               "was removed; archive it again")
        partial.rename(path)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    return ids


def _open(path: Path) -> Path:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    # every source text is in it: readable by the proxy's own user only
    partial.touch(mode=0o600)
    partial.chmod(0o600)
    return partial


def _lines(out: Any, points: list[Stored]) -> None:
    for p in points:
        out.write(msgspec.json.encode(_Point(p.id, p.vector or [], p.payload, doc_id_of(p),
                                             p.named)) + b"\n")


def _prune(folder: Path, keep: int) -> list[str]:
    files = sorted(folder.glob("*.jsonl.gz"), key=lambda f: f.stat().st_mtime, reverse=True)
    for old in files[keep:]:
        old.unlink()
    return [str(f) for f in files[keep:]]


def newest(folder: Path, alias: str, version: Version) -> Path:
    """The newest archive of a declared version (its name is a rule name: no path, no
    pattern), resolved inside the alias's archive folder."""
    home = (folder / alias).resolve()
    files = sorted((f for f in home.glob(f"{version.name}-*.jsonl.gz")
                    if f.resolve().parent == home),
                   key=lambda f: f.stat().st_mtime, reverse=True)
    if not files:
        raise NotFoundError(f"{alias}/{version.name}: no archive in {folder / alias}")
    return files[0]


def _read(path: Path) -> tuple[_Header, list[_Point]]:
    with gzip.open(path, "rb") as lines:
        rows: Iterator[bytes] = iter(lines)
        header = msgspec.json.decode(next(rows), type=_Header)
        return header, [msgspec.json.decode(row, type=_Point) for row in rows if row.strip()]


async def unarchive(ingestor: Ingestor, rollout: Rollout, name: str, folder: Path
                    ) -> ArchiveInfo:
    """Write the newest archive of ``name`` back, as it was archived."""
    path = newest(folder, rollout.alias, rollout.version(name))
    header, points = await asyncio.to_thread(_read, path)
    version = header.version
    if header.alias != rollout.alias or version.name != name:
        raise RuleError("version", f"{path.name} holds {header.alias}/{version.name}, "
                                   f"not {rollout.alias}/{name}")
    await ingestor.store.ensure_collection(version.target, version, carried=rollout.carried)
    for start in range(0, len(points), BATCH):
        await ingestor.store.upsert(version.target, [
            PointIn(p.id, p.vector, p.payload, carried_of(Stored(p.id, {}, named=p.named),
                                                          rollout.carried))
            for p in points[start:start + BATCH]])
    await ingestor.store.optimize(version.target)
    return ArchiveInfo(alias=rollout.alias, version=name, collection=version.target.collection,
                       file=str(path), points=len(points),
                       at=datetime.now(UTC).isoformat(timespec="milliseconds"))
