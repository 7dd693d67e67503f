"""Which versions may serve, and whether the proxy is ready: what ``make_app`` wires in and
``/readyz`` reports, decided here rather than in either.

A rule's versions are prepared when the rule is first seen or changes: their encoders loaded,
their collections checked against the version's envelope. A version that fails either is
unavailable (its alias alone is affected: the candidate's queries fall back to stable, stable's
get a 503 naming the reason) and the reason is logged and shown in ``/readyz``. A missing
collection, or a store that cannot say, is logged, not held against the version.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Container, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import structlog

from proxy.models.loader import EncoderKey, encoder_key
from proxy.vectors.base import (
    RESERVED,
    UNRECORDED_MODEL,
    CollectionInfo,
    VectorStore,
    mismatches,
)
from rollout_rules.errors import BackendError
from rollout_rules.model import Rollout, Version

log = structlog.get_logger("embedshift.app")


@dataclass
class Lifecycle:
    """Where the process is: ``started`` once start-up has prepared every rule it read,
    ``draining`` once a shutdown began (new connections should go elsewhere)."""

    started: bool = False
    draining: bool = False

    def ready(self, rules_age_s: float | None) -> bool:
        """Started, not draining, and the rules read at least once (no alias declared yet is
        a snapshot too)."""
        return rules_age_s is not None and self.started and not self.draining


def close_when_draining(lifecycle: Lifecycle) -> Callable[[Any, Any], Awaitable[None]]:
    """An answer hook (``on_response_prepare``): while draining, every answer says
    ``Connection: close``, so no keep-alive connection is still open, idle, when the listener
    closes (a request sent on one just then would be lost)."""

    async def close(_request: Any, response: Any) -> None:
        if lifecycle.draining:
            response.force_close()  # the connection closes once this answer is out
            response.headers["Connection"] = "close"  # the head is built before this hook

    return close


class Loading(Protocol):
    """The encoders: loading a rule's, and which are loaded."""

    @property
    def by_key(self) -> Mapping[EncoderKey, object]: ...

    async def load(self, rollout: Rollout) -> dict[str, str]: ...


class Marking(Protocol):
    """Who must know what may not serve (the searcher)."""

    @property
    def unavailable(self) -> Mapping[tuple[str, str], str]: ...

    def mark_unavailable(self, alias: str, reasons: Mapping[str, str]) -> None: ...


class Versions:
    """Prepares each rule's versions and tells the searcher which may not serve."""

    def __init__(self, encoders: Loading, store: VectorStore, searcher: Marking) -> None:
        self.encoders, self.store, self.searcher = encoders, store, searcher

    async def prepare(self, rollout: Rollout) -> None:
        """Load the rule's encoders and check its collections; mark what fails, with why."""
        problems = await self.encoders.load(rollout)
        for version in rollout.versions:
            if version.name not in problems:
                found = await collection_problems(version, self.store,
                                                  serving=version.name == rollout.stable)
                if found:
                    problems[version.name] = found
        for name, reason in problems.items():
            log.error("version_unavailable", alias=rollout.alias, version=name, reason=reason)
        self.searcher.mark_unavailable(rollout.alias, problems)

    def forget(self, alias: str) -> None:
        """The alias is gone: nothing of it is unavailable any more."""
        self.searcher.mark_unavailable(alias, {})

    def detail(self, rollouts: Mapping[str, Rollout]) -> tuple[dict[str, str], list[str]]:
        """What ``/readyz`` names: the unavailable versions (``alias/version``: why) and those
        whose encoder is still loading."""
        return version_detail(rollouts, self.encoders.by_key, self.searcher.unavailable)


def version_detail(rollouts: Mapping[str, Rollout], loaded: Container[EncoderKey],
                   unavailable: Mapping[tuple[str, str], str]
                   ) -> tuple[dict[str, str], list[str]]:
    """(unavailable versions with their reasons, versions still loading), as ``alias/name``."""
    named = {f"{alias}/{name}": reason for (alias, name), reason in unavailable.items()}
    missing = [f"{alias}/{v.name}" for alias, rollout in rollouts.items()
               for v in rollout.versions
               if encoder_key(v) not in loaded and f"{alias}/{v.name}" not in named]
    return named, missing


async def collection_problems(version: Version, store: VectorStore, serving: bool = True
                              ) -> str | None:
    """Why a version must not serve from its collection (encoded differently), if it must not.
    A missing collection, or a store that cannot say, is logged, not held against it; nor is
    a candidate's named vector not yet added to a shared collection (its first write adds it,
    and until then its coverage is nothing, so nobody is sent to it); stable's is."""
    try:
        info = await store.describe(version.target)
    except BackendError as exc:
        log.warning("collection_unchecked", version=version.name,
                    collection=version.target.collection, error=str(exc))
        return None
    if info is None:
        log.warning("collection_missing", version=version.name,
                    collection=version.target.collection)
        return None
    if info.missing is not None and not serving:
        log.warning("collection_vector_missing", version=version.name,
                    collection=version.target.collection)
        return None
    problems = mismatches(version, info)
    if problems:
        return f"does not match its collection: {'; '.join(problems)}"
    return await foreign_points(version, info, store)


FOREIGN_SAMPLE = 16
"""Points read to tell a collection embedshift wrote from one an application wrote."""


async def foreign_points(version: Version, info: CollectionInfo, store: VectorStore
                         ) -> str | None:
    """Why a version must not serve from a collection whose points embedshift did not write (no
    envelope: an application's own), unless it was adopted (``text_field``), which checked that
    the stored vectors are the version's model's; None when it may."""
    if version.text_field or not info.points or info.model_id not in (None, UNRECORDED_MODEL):
        return None
    try:
        sample, _ = await store.scroll(version.target, None, FOREIGN_SAMPLE, fields=[RESERVED])
    except BackendError as exc:
        log.warning("collection_unchecked", version=version.name,
                    collection=version.target.collection, error=str(exc))
        return None
    if all(RESERVED in point.payload for point in sample):
        return None
    return (f"collection {version.target.collection} holds {info.points} points embedshift did "
            f"not write: nothing says {version.model} made their vectors. Adopt it instead "
            f"(embedshift adopt ALIAS --collection {version.target.collection} --model "
            f"{version.model}), which checks that it did; or, for a rule declared so before, "
            "name the payload key holding each point's text (text_field) in the version")
