"""Rule documents parse into frozen values, round-trip, and are refused naming the bad field."""

from __future__ import annotations

from typing import Any

import pytest

from rollout_rules.errors import RuleError
from rollout_rules.model import State, dump_rollout, parse_rollout
from tests.unit.core.rollouts import document, rollout


def test_a_valid_document_parses_into_frozen_values() -> None:
    r = rollout(percent=12.34, state="paused")
    assert (r.stable, r.candidate, r.percent_bp, r.state) == ("v1", "v2", 1234, State.PAUSED)
    assert r.version("v2").target.collection == "p_v2"
    with pytest.raises(AttributeError):
        r.percent = 50  # type: ignore[misc]  # frozen on purpose


def test_a_document_survives_a_round_trip() -> None:
    r = rollout(overrides={"users": {"qa-1": "v2"}, "tenants": {"acme": "v1"}}, salt="s1")
    assert parse_rollout(dump_rollout(r)) == r


def _versions_with(**version_changes: Any) -> list[dict[str, Any]]:
    versions: list[dict[str, Any]] = document()["versions"]
    return [versions[0], {**versions[1], **version_changes}]


@pytest.mark.parametrize(("changes", "field"), [
    ({"percent": 10.001}, "percent"),
    ({"percent": 101}, "percent"),
    ({"percent": "ten"}, "percent"),
    ({"candidate": "v3"}, "candidate"),
    ({"candidate": "v1"}, "candidate"),
    ({"stable": "nope"}, "stable"),
    ({"percnt": 5}, "percnt"),
    ({"state": "sleeping"}, "state"),
    ({"alias": "bad alias!"}, "alias"),
    ({"versions": []}, "versions"),
    ({"versions": _versions_with(dimensions=0)}, "versions[1].dimensions"),
    ({"versions": _versions_with(metric="cosinus")}, "versions[1].metric"),
    ({"versions": _versions_with(name="v1")}, "versions"),
    ({"versions": _versions_with(target={"collection": "p_v1"})}, "versions[1].target"),
    ({"overrides": {"users": {"u": "v9"}}}, "overrides.users.u"),
    ({"candidate": None, "percent": 5}, "percent"),
    ({"coverage_gate": {"steps": [{"min_coverage": 0.5, "max_percent": 5},
                                  {"min_coverage": 0.2, "max_percent": 50}]}},
     "coverage_gate.steps[1]"),
    ({"coverage_gate": {"steps": [{"min_coverage": 1.5, "max_percent": 5}]}},
     "coverage_gate.steps[0].min_coverage"),
])
def test_a_bad_document_is_refused_naming_the_field(changes: dict[str, Any], field: str) -> None:
    with pytest.raises(RuleError) as caught:
        parse_rollout(document(**changes))
    assert caught.value.field == field, str(caught.value)


def test_versions_may_share_a_collection_when_a_payload_match_separates_them() -> None:
    versions = _versions_with(target={"collection": "p_v1", "payload_match": {"model": "v2"}})
    assert parse_rollout(document(versions=versions)).version("v2").target.payload_match == {
        "model": "v2"}


@pytest.mark.parametrize("raw", [b"{", b"[]", b"null", "{\"alias\": 3}"])
def test_undecodable_documents_are_refused(raw: bytes | str) -> None:
    with pytest.raises(RuleError):
        parse_rollout(raw)


def test_a_rule_names_models_never_paths() -> None:
    for model in ("/etc/passwd", "../models/x", "~/m", "a/b/c"):
        with pytest.raises(RuleError, match=r"versions\[0\]\.model: .* never paths"):
            parse_rollout({"alias": "a", "stable": "v1", "versions": [
                {"name": "v1", "model": model, "dimensions": 3, "target": {"collection": "c"}}]})
