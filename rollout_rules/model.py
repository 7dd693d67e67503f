"""The rollout domain as frozen values, and the one place rule documents are parsed.

A rule document is JSON (or a mapping decoded from TOML). ``parse_rollout`` decodes it strictly
(unknown fields are refused, so a typo never silently means "default") and then checks what
types cannot say: names refer to declared versions, percent has 0.01 resolution, two versions
never share a collection without a payload filter telling their points apart. Every failure is a
``RuleError`` that names the field, so an operator can fix the document without reading code.
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Mapping
from enum import StrEnum
from typing import Annotated, Any, Literal

import msgspec
from msgspec.structs import replace

from rollout_rules.errors import RuleError

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$"
Name = Annotated[str, msgspec.Meta(pattern=NAME_PATTERN)]
MODEL_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._\-]{0,63}(/[A-Za-z0-9][A-Za-z0-9._\-]{0,99})?$"
Percent = Annotated[float, msgspec.Meta(ge=0.0, le=100.0)]
Fraction = Annotated[float, msgspec.Meta(ge=0.0, le=1.0)]
PayloadValue = str | int | bool

# 100% is 10,000 basis points: the proxy's buckets have the same resolution (0.01%).
BASIS_POINTS = 10_000


class State(StrEnum):
    RAMPING = "ramping"
    PAUSED = "paused"
    ROLLED_BACK = "rolled_back"
    PROMOTED = "promoted"


class _Frozen(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Base for document parts: immutable, keyword-only, strict about unknown fields."""


class CollectionSettings(_Frozen, frozen=True):
    """How a Qdrant server creates a version's collection, where the rule says otherwise than
    stable's collection (each setting left out is copied from it)."""

    shard_number: Annotated[int, msgspec.Meta(ge=1, le=1024)] | None = None
    replication_factor: Annotated[int, msgspec.Meta(ge=1, le=64)] | None = None
    write_consistency_factor: Annotated[int, msgspec.Meta(ge=1, le=64)] | None = None
    on_disk_payload: bool | None = None
    on_disk: bool | None = None  # the vectors


class Target(_Frozen, frozen=True):
    """Where a version's vectors live: a collection, maybe a named vector and a payload match;
    ``create``: settings its collection is created with, over stable's."""

    collection: Name
    vector_name: str | None = None
    payload_match: dict[str, PayloadValue] = msgspec.field(default_factory=dict)
    create: CollectionSettings | None = None


class Version(_Frozen, frozen=True):
    """The envelope of one embedding model version and the target it searches."""

    name: Name
    # a catalogue name (``my-minilm``) or a model id (``org/name``): never a path
    model: Annotated[str, msgspec.Meta(min_length=1)]
    target: Target
    dimensions: Annotated[int, msgspec.Meta(gt=0, le=65536)]
    revision: str = ""
    normalized: bool = True
    metric: Literal["cosine", "dot", "euclid", "manhattan"] = "cosine"
    quantization: Literal["none", "int8"] = "none"
    query_prefix: str = ""
    # the payload key holding the text of points embedshift did not write (an adopted
    # collection): the backfill re-encodes it from there
    text_field: Annotated[str, msgspec.Meta(max_length=64,
                                            pattern=r"^(|[A-Za-z0-9_][\w.\-]*)$")] = ""


class CoverageStep(_Frozen, frozen=True):
    """At or above ``min_coverage`` of the corpus re-encoded, at most ``max_percent`` of users."""

    min_coverage: Fraction
    max_percent: Percent


DEFAULT_STEPS = (CoverageStep(min_coverage=0.99, max_percent=100.0),)
"""Safe by default: no user reaches a candidate missing more than 1% of what stable answers."""
STEPPED = (
    CoverageStep(min_coverage=0.0, max_percent=5.0),
    CoverageStep(min_coverage=0.5, max_percent=25.0),
    CoverageStep(min_coverage=0.8, max_percent=50.0),
    CoverageStep(min_coverage=0.95, max_percent=100.0),
)
"""A stepped gate, as an explicit choice: some users on a candidate still being filled."""


class CoverageGate(_Frozen, frozen=True):
    """Caps the candidate's share by how much of what it should hold it holds: by answer
    completeness (the default: the share of stable's sampled answer hits the candidate holds,
    document coverage while no answers were sampled), by documents (done / total) or by
    popularity (as completeness, over all answers). The default lets nobody in below 99%."""

    enabled: bool = True
    basis: Literal["completeness", "documents", "popularity"] = "completeness"
    steps: tuple[CoverageStep, ...] = DEFAULT_STEPS


class Overrides(_Frozen, frozen=True):
    """Named users and tenants pinned to a version, and whether a request may choose one (off
    unless the rule allows it; the proxy also asks such a request for its override token)."""

    users: dict[str, Name] = msgspec.field(default_factory=dict)
    tenants: dict[str, Name] = msgspec.field(default_factory=dict)
    allow_request: bool = False


class GuardPolicy(_Frozen, frozen=True):
    """When the proxy rolls the candidate back by itself (read by ``rollout_rules.guard``):
    bounds on the version under test, the traffic it needs before judging, how long it looks
    back, the false-alarm rate of its sequential test, the share of stable's queries also sent
    to the other version (shadow traffic) and of the candidate's sent to stable (its baseline),
    and how long it keeps watching after a promote."""

    enabled: bool = True
    max_error_rate: Fraction = 0.05
    max_fallback_rate: Fraction = 0.05
    max_p99_ms: Annotated[float, msgspec.Meta(gt=0)] = 250.0
    min_overlap: Fraction = 0.0  # mean shadow overlap@10 below this is a breach; 0: not judged
    min_requests: Annotated[int, msgspec.Meta(ge=1)] = 50
    window_s: Annotated[float, msgspec.Meta(gt=0, le=86400)] = 60.0
    alpha: Annotated[float, msgspec.Meta(gt=0, lt=0.5)] = 0.01
    shadow_share: Fraction = 0.0
    # the share of the candidate's queries also searched in stable while it ramps: the guard's
    # baseline at every step, 100% included, where no user is left on stable
    baseline_share: Fraction = 0.1
    watch_s: Annotated[float, msgspec.Meta(ge=0, le=30 * 86400)] = 1800.0
    # online quality (``rollout_rules.online``): the version under test's click-through of its
    # own answers may fall at most this share below the baseline's, its re-query rate rise at
    # most this share above, before a significant difference is a breach; a significant loss
    # in interleaving always is
    max_click_drop: Fraction = 0.1
    max_requery_rise: Fraction = 0.1


class Experiment(_Frozen, frozen=True):
    """How the candidate is compared with stable on users' own queries: ``interleave`` answers a
    ``share`` of the queries from users the coverage gate would allow on the candidate with one
    team-draft list of both versions' hits, and credits their clicks to the version that placed
    each."""

    mode: Literal["interleave"] = "interleave"
    share: Fraction = 0.1


class PromotionPolicy(_Frozen, frozen=True):
    """What ``promote`` asks beyond full coverage and a passed ``verify``: a golden-set judgement
    (``embedshift eval --alias``) where the candidate's nDCG@10 is at most ``max_ndcg_drop``
    below stable's. A failed judgement always blocks; ``require_quality`` blocks without one."""

    require_quality: bool = False
    max_ndcg_drop: Fraction = 0.01
    # online evidence a promote (and a guarded ramp's last step) waits for: none, no significant
    # loss over enough interleaved answers, or a significant win
    require_online: Literal["off", "no-loss", "win"] = "off"


class Carried(_Frozen, frozen=True):
    """A vector every version holds as the application wrote it, beside the one being migrated:
    a sparse one (BM25, SPLADE; with Qdrant's IDF modifier or none) or a dense one of another
    model's (its size and metric). Its meaning does not change with the migrated model, so it
    is written into every version unchanged, copied by the backfill from stable's points, and
    searched as given."""

    sparse: bool = True
    modifier: Literal["idf"] | None = None  # a sparse vector's
    size: Annotated[int, msgspec.Meta(gt=0, le=65536)] | None = None  # a dense vector's
    metric: Literal["cosine", "dot", "euclid", "manhattan"] = "cosine"


class Rollout(_Frozen, frozen=True):
    """One alias's rule: which version is stable, which is the candidate, and how far it goes."""

    alias: Name
    versions: tuple[Version, ...]
    stable: Name
    candidate: Name | None = None
    percent: Percent = 0.0
    state: State = State.RAMPING
    salt: str = ""
    stickiness: Annotated[str, msgspec.Meta(min_length=1)] = "default"
    coverage_gate: CoverageGate = msgspec.field(default_factory=CoverageGate)
    overrides: Overrides = msgspec.field(default_factory=Overrides)
    guard: GuardPolicy = msgspec.field(default_factory=GuardPolicy)
    promotion: PromotionPolicy = msgspec.field(default_factory=PromotionPolicy)
    experiment: Experiment | None = None
    # the application's name for the vector being migrated ("": the unnamed one; each version
    # keeps it under its own target's vector_name), and the vectors carried beside it by name
    vector: Annotated[str, msgspec.Meta(max_length=255)] = ""
    carried: dict[str, Carried] = msgspec.field(default_factory=dict)
    previous_stable: Name | None = None
    promoted_at: str = ""  # when the stable of a promoted rollout was promoted (ISO 8601)
    # the spec of the rules file last applied (``rollout_rules.spec``): what a re-apply of a
    # changed file is compared with, so settings changed by hand since then are kept
    applied: dict[str, Any] = msgspec.field(default_factory=dict)
    revision: Annotated[int, msgspec.Meta(ge=0)] = 0
    updated_by: str = ""
    updated_at: str = ""
    reason: str = ""

    @property
    def group(self) -> str:
        """The bucketing group: the salt, or the alias when none is set (as Unleash's groupId)."""
        return self.salt or self.alias

    @property
    def percent_bp(self) -> int:
        return round(self.percent * 100)

    def version(self, name: str) -> Version:
        for version in self.versions:
            if version.name == name:
                return version
        raise RuleError("versions", f"no version named {name!r} (declared: {self.version_names})")

    @property
    def version_names(self) -> str:
        return ", ".join(v.name for v in self.versions)

    def has_version(self, name: str) -> bool:
        return any(v.name == name for v in self.versions)


def parse_rollout(document: bytes | str | Mapping[str, Any]) -> Rollout:
    """Decode and check a rule document; raise RuleError naming the field on any fault."""
    try:
        if isinstance(document, (bytes, str)):
            rollout = msgspec.json.decode(document, type=Rollout)
        else:
            rollout = msgspec.convert(document, type=Rollout)
    except msgspec.ValidationError as exc:
        raise rule_error(str(exc)) from exc
    except msgspec.DecodeError as exc:
        raise RuleError("document", f"not valid JSON ({exc})") from exc
    _check_versions(rollout)
    _check_carried(rollout)
    _check_references(rollout)
    _check_percent(rollout)
    _check_steps(rollout.coverage_gate)
    if rollout.percent == 0 and math.copysign(1, rollout.percent) < 0:
        rollout = replace(rollout, percent=0.0)  # -0.0 is 0, and must never print as "-0%"
    return rollout


def dump_rollout(rollout: Rollout) -> bytes:
    return msgspec.json.encode(rollout)


def to_builtins(rollout: Rollout) -> dict[str, Any]:
    built: dict[str, Any] = msgspec.to_builtins(rollout)
    return built


def check_rollout(rollout: Rollout) -> Rollout:
    """Every check ``parse_rollout`` makes, for a rollout built in code (msgspec checks field
    constraints only when decoding, so a value built by ``replace`` goes round once)."""
    return parse_rollout(to_builtins(rollout))


def _check_versions(rollout: Rollout) -> None:
    if not rollout.versions:
        raise RuleError("versions", "declare at least one version")
    names = [v.name for v in rollout.versions]
    for i, version in enumerate(rollout.versions):
        if not re.match(MODEL_PATTERN, version.model):
            raise RuleError(f"versions[{i}].model", f"{version.model!r} is not a catalogue name "
                                                    "or a model id (org/name): a rule names "
                                                    "models, never paths (embedshift models "
                                                    "list)")
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise RuleError("versions", f"names must be unique, repeated: {', '.join(duplicates)}")
    targets = [(v.target.collection, tuple(sorted(v.target.payload_match.items()))) for v in
               rollout.versions]
    for i, target in enumerate(targets):
        if target in targets[:i]:
            raise RuleError(
                f"versions[{i}].target",
                f"version {names[i]!r} shares collection {target[0]!r} with another version "
                "and no payload_match tells their points apart: their vectors would mix",
            )
    _check_shared_vectors(rollout)


def _check_carried(rollout: Rollout) -> None:
    """Carried vectors are named apart from the migrated one; a dense one has a size, a sparse
    one none; none shares a name with a version's own vector."""
    own = {v.target.vector_name or "" for v in rollout.versions} | {rollout.vector}
    for name, carried in rollout.carried.items():
        where = f"carried.{name}" if name else "carried"
        if name in own:
            raise RuleError(where, f"{name!r} is the migrated vector (or a version's own): a "
                                   "carried vector has a name of its own")
        if carried.sparse and carried.size is not None:
            raise RuleError(f"{where}.size", "a sparse vector has no size")
        if not carried.sparse and carried.size is None:
            raise RuleError(f"{where}.size", "a dense carried vector needs its size")
        if not carried.sparse and carried.modifier is not None:
            raise RuleError(f"{where}.modifier", "only a sparse vector has a modifier")


def _check_shared_vectors(rollout: Rollout) -> None:
    """Versions on one vector of one collection store vectors of one size and metric."""
    first: dict[tuple[str, str | None], Version] = {}
    for i, v in enumerate(rollout.versions):
        other = first.setdefault((v.target.collection, v.target.vector_name), v)
        if (other.dimensions, other.metric) != (v.dimensions, v.metric):
            where = f"vector {v.target.vector_name!r}" if v.target.vector_name else \
                "the unnamed vector"
            raise RuleError(f"versions[{i}].target",
                            f"version {v.name!r} ({v.dimensions}-d {v.metric}) shares {where} "
                            f"of collection {v.target.collection!r} with {other.name!r} "
                            f"({other.dimensions}-d {other.metric}); give it a vector_name "
                            "of its own")


def _check_references(rollout: Rollout) -> None:
    declared = {v.name for v in rollout.versions}
    references = [("stable", rollout.stable), ("candidate", rollout.candidate),
                  ("previous_stable", rollout.previous_stable)]
    references += [(f"overrides.users.{u}", v) for u, v in rollout.overrides.users.items()]
    references += [(f"overrides.tenants.{t}", v) for t, v in rollout.overrides.tenants.items()]
    for field, name in references:
        if name is not None and name not in declared:
            raise RuleError(field, f"{name!r} is not a declared version ({rollout.version_names})")
    if rollout.candidate is not None and rollout.candidate == rollout.stable:
        raise RuleError("candidate", "must differ from stable")


def _check_percent(rollout: Rollout) -> None:
    if abs(rollout.percent * 100 - rollout.percent_bp) > 1e-6:
        raise RuleError("percent", f"{rollout.percent} has finer resolution than 0.01")
    if rollout.candidate is None and rollout.percent > 0:
        raise RuleError("percent", "must be 0 when there is no candidate")


def _check_steps(gate: CoverageGate) -> None:
    for i, (low, high) in enumerate(itertools.pairwise(gate.steps)):
        if high.min_coverage <= low.min_coverage or high.max_percent < low.max_percent:
            raise RuleError(
                f"coverage_gate.steps[{i + 1}]",
                "steps must rise: min_coverage strictly, max_percent never falling",
            )


_UNKNOWN = re.compile(r"unknown field `([^`]*)`")
_PATH = re.compile(r"^(?P<message>.*) - at `\$(?P<path>[^`]*)`$", re.DOTALL)


def rule_error(text: str) -> RuleError:
    """Turn msgspec's "Expected `int` - at `$.versions[0].dimensions`" into a RuleError."""
    match = _PATH.match(text)
    path, message = (match["path"].lstrip("."), match["message"]) if match else ("", text)
    unknown = _UNKNOWN.search(message)
    if unknown is not None:
        path = f"{path}.{unknown[1]}".lstrip(".")
        message = "unknown field (a typo? unknown fields are refused, not ignored)"
    return RuleError(path or "document", message)


def active_versions(rollout: Rollout) -> list[Version]:
    """The versions a document must reach: stable, candidate and the previous stable."""
    names = {rollout.stable, rollout.candidate, rollout.previous_stable} - {None}
    return [v for v in rollout.versions if v.name in names]
