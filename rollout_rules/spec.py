"""Rules as code: what a rules file declares (the spec) kept apart from what operations did to
the rule (its status), as Argo Rollouts and Flagger keep spec and status.

A rules file declares the versions, gates, guard and promotion policy, overrides, salt and
stickiness. Applying it again merges three ways, as ``kubectl apply`` does: a setting the file
changed since it was last applied (``Rollout.applied`` keeps that spec) takes the file's value;
a setting the file did not change keeps the rule's live value, so a guard threshold edited by
hand survives re-applying an unchanged file. Which version is stable, the candidate's share,
the state, the previous stable and the promote's time are the operators' and the automation's:
re-applying a file never reverts a promote, a rollback or a ramp. The file's stable and
candidate count only where they move the rule on (a candidate added, replaced or dropped next
to the same stable); a file still naming the versions as they were before a promote is read as
such, and what it says is kept aside and named. ``take_status`` applies the file as written.

Pure: the rule and the file's rule in, the rule it becomes out.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import msgspec
from msgspec.structs import replace

from rollout_rules.errors import RuleError
from rollout_rules.model import Rollout, State, Version, check_rollout

SPEC_FIELDS = ("versions", "salt", "stickiness", "coverage_gate", "overrides", "guard",
               "promotion", "experiment", "vector", "carried")
STATUS_FIELDS = ("stable", "candidate", "previous_stable", "percent", "state", "promoted_at")
STAMP_FIELDS = ("revision", "updated_by", "updated_at", "reason", "applied")


class Applied(NamedTuple):
    rollout: Rollout  # what the rule becomes (equal to the current one: nothing to do)
    kept: list[str]  # what the file says that the rule's status keeps otherwise, and why


def declared_spec(rollout: Rollout) -> dict[str, Any]:
    """The spec part of a rule, as a document (what ``Rollout.applied`` keeps)."""
    data = _plain(rollout)
    return {name: data[name] for name in SPEC_FIELDS}


def _plain(rollout: Rollout) -> dict[str, Any]:
    """The rule as JSON would give it back: lists, never tuples, so a rule read from the
    store and one built here compare equal when they are."""
    data: dict[str, Any] = msgspec.json.decode(msgspec.json.encode(rollout))
    return data


def first_declaration(declared: Rollout) -> Rollout:
    """A file's rule as declared the first time: it remembers its spec for the next apply."""
    return replace(declared, applied=declared_spec(declared))


def apply_file(current: Rollout, declared: Rollout, *, take_status: bool = False) -> Applied:
    """The rule ``current`` becomes when the file ``declared`` is applied to it."""
    file_spec = declared_spec(declared)
    last = current.applied or declared_spec(current)  # never applied: the file decides all
    spec = _unflatten(_merge(_flatten(declared_spec(current)), _flatten(last),
                             _flatten(file_spec)))
    base = msgspec.convert({**_plain(current), **spec, "applied": file_spec}, type=Rollout)
    if take_status:
        status = {name: getattr(declared, name) for name in STATUS_FIELDS}
        return Applied(check_rollout(replace(base, **status)), [])
    status, kept = _status(current, declared)
    return Applied(check_rollout(replace(base, **status)), kept)


def _merge(live: dict[str, Any], last: dict[str, Any], file: dict[str, Any]
           ) -> dict[str, Any]:
    """Three-way: what the file changed since it was last applied, else the live value."""
    merged = {key: file[key] if file.get(key, _ABSENT) != last.get(key, _ABSENT) else value
              for key, value in live.items()}
    merged.update({key: value for key, value in file.items() if key not in live})
    return merged


_ABSENT = object()


def _flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mappings as dotted keys; lists (versions, gate steps) are one value each."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and value and key not in _WHOLE:
            flat.update(_flatten(value, f"{path}."))
        else:
            flat[path] = value
    return flat


# overrides' maps: a user's pin is one setting, the map the unit; an experiment is one setting
_WHOLE = ("users", "tenants", "experiment", "carried")


def _unflatten(flat: dict[str, Any]) -> dict[str, Any]:
    nested: dict[str, Any] = {}
    for path, value in flat.items():
        *parents, last = path.split(".")
        node = nested
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    return nested


def _status(current: Rollout, declared: Rollout) -> tuple[dict[str, Any], list[str]]:
    if declared.stable == current.stable:
        if declared.candidate == current.candidate:
            return {}, _kept_percent(current, declared)
        # a candidate added, replaced or dropped next to the same stable: the file moves on
        return {"candidate": declared.candidate, "percent": declared.percent,
                "state": State.RAMPING}, []
    moved_on = current.state is State.PROMOTED or current.previous_stable is not None
    if (moved_on and current.stable == declared.candidate) or \
            declared.stable == current.previous_stable:
        return {}, [f"stable: the file says {declared.stable}, the rule's stable is "
                    f"{current.stable} (changed by operations, last by "
                    f"{current.updated_by or 'someone'}): kept; write stable = "
                    f"{current.stable!r} in the file, or apply it with --take-status to make "
                    f"{declared.stable} stable again"]
    raise RuleError("stable", f"the file makes {declared.stable} stable, the rule's stable is "
                              f"{current.stable}: re-applying a file never changes the stable "
                              "version (promote does); apply it with --take-status to force it")


def _kept_percent(current: Rollout, declared: Rollout) -> list[str]:
    if declared.percent == current.percent and declared.state is current.state:
        return []
    return [f"percent: the file says {declared.percent:g}%, the rule is at {current.percent:g}% "
            f"({current.state}): kept (`embedshift set` changes it)"]


def differences(before: Rollout, after: Rollout) -> list[str]:
    """Field by field, what ``after`` changes of ``before`` (stamps left out), one line each:
    ``guard.min_requests: 50 -> 20``; versions by name."""
    old, new = _document(before), _document(after)
    lines: list[str] = []
    versions_old = {v["name"]: v for v in old.pop("versions")}
    versions_new = {v["name"]: v for v in new.pop("versions")}
    for name in sorted(versions_old.keys() | versions_new.keys()):
        if name not in versions_new:
            lines.append(f"versions.{name}: removed")
        elif name not in versions_old:
            lines.append(f"versions.{name}: added ({_version(versions_new[name])})")
        else:
            lines += _walk(f"versions.{name}", versions_old[name], versions_new[name])
    return lines + _walk("", old, new)


def document(rollout: Rollout) -> dict[str, Any]:
    """The rule as a rules document (what ``export`` writes): everything but the stamps, so
    applying it to the same rule changes nothing."""
    return _document(rollout)


REQUIRED = {"alias", "stable", "versions", "name", "model", "dimensions", "target", "collection"}
"""What a rules document names whatever its value (the rest may be left to defaults)."""


def spec_document(rollout: Rollout) -> dict[str, Any]:
    """The rules file to keep in git (what ``export`` writes): the spec alone (versions, gates,
    guard, promotion, overrides, salt, stickiness, and which versions are stable and candidate),
    each setting left out where it holds its default. Applying it to the same rule changes
    nothing: a setting left out reads back as its default, which is what the rule holds."""
    full = _document(rollout)
    doc = {key: full[key] for key in ("alias", "stable", "candidate", *SPEC_FIELDS)
           if key in full}
    bare = tuple(msgspec.convert({"name": v.name, "model": v.model, "dimensions": v.dimensions,
                                  "target": {"collection": v.target.collection}}, type=Version)
                 for v in rollout.versions)
    defaults = _plain(Rollout(alias=rollout.alias, versions=bare, stable=rollout.stable))
    sparse: dict[str, Any] = _sparse(doc, defaults)
    return sparse


def _sparse(value: Any, default: Any) -> Any:
    """``value`` without what equals ``default`` (mappings key by key, lists item by item),
    keeping the keys every document names."""
    if isinstance(value, dict) and isinstance(default, dict):
        return {key: _sparse(item, default.get(key)) for key, item in value.items()
                if key in REQUIRED or key not in default or item != default[key]}
    if isinstance(value, list) and isinstance(default, list) and len(value) == len(default):
        return [_sparse(item, base) for item, base in zip(value, default, strict=True)]
    return value


def _document(rollout: Rollout) -> dict[str, Any]:
    data = _plain(rollout)
    for name in STAMP_FIELDS:
        data.pop(name, None)
    return data


def _version(v: dict[str, Any]) -> str:
    target = v["target"]
    where = target["collection"] + (f", vector {target['vector_name']}"
                                    if target.get("vector_name") else "")
    return f"{v['model']}, {v['dimensions']}-d {v['metric']}, collection {where}"


def _walk(path: str, old: Any, new: Any) -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        lines: list[str] = []
        for key in [*old, *(k for k in new if k not in old)]:
            lines += _walk(f"{path}.{key}" if path else key, old.get(key), new.get(key))
        return lines
    return [] if old == new else [f"{path}: {_show(old)} -> {_show(new)}"]


def _show(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (dict, list)):
        return msgspec.json.encode(value).decode()
    return str(value)
