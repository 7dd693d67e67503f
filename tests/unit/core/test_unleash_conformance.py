"""Our buckets and stickiness pass Unleash's gradual-rollout specification cases.

The cases are copied into ``tests/conformance/unleash`` (source named in SOURCE.md there). A small
evaluator maps each Unleash strategy onto our bucketing (normaliser 100) and stickiness
rules; if our hash, modulo, group prefix or stickiness fallbacks differed from Unleash, these fail.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from rollout_rules.bucket import UNLEASH_NORMALISER, bucket
from rollout_rules.decide import Context, stickiness_value
from tests.paths import REPO

FILES = ["unleash-03-gradual-rollout-user-id-strategy.json",
         "unleash-04-gradual-rollout-session-id-strategy.json",
         "unleash-05-gradual-rollout-random-strategy.json",
         "unleash-10-flexible-rollout-strategy.json",
         "unleash-12-custom-stickiness.json"]

_STICKINESS = {"userId": "user_id", "sessionId": "session_id", "default": "default",
               "random": "random", "gradualRolloutUserId": "user_id",
               "gradualRolloutSessionId": "session_id", "gradualRolloutRandom": "random"}


def _context(raw: dict[str, Any], random_key: str) -> Context:
    return Context(user_id=raw.get("userId"), session_id=raw.get("sessionId"),
                   properties=raw.get("properties", {}), random_key=random_key)


def _strategy_on(strategy: dict[str, Any], feature: str, context: Context) -> bool:
    name, params = strategy["name"], strategy.get("parameters", {})
    if name == "default":
        return True
    percentage = int(params.get("percentage", params.get("rollout", 0)))
    stickiness = params.get("stickiness", name)
    key = stickiness_value(_STICKINESS.get(stickiness, stickiness), context)
    if key is None:
        return False
    group = params.get("groupId", feature)
    return percentage > 0 and bucket(group, key, UNLEASH_NORMALISER) <= percentage


def _enabled(feature: dict[str, Any], context: Context) -> bool:
    return feature["enabled"] and any(
        _strategy_on(s, feature["name"], context) for s in feature["strategies"])


def _cases() -> list[Any]:
    folder = REPO / "tests" / "conformance" / "unleash"
    cases = []
    for name in FILES:
        spec = json.loads((folder / name).read_text())
        features = {f["name"]: f for f in spec["state"]["features"]}
        cases += [pytest.param(features[t["toggleName"]], t, id=f"{name[:10]}:{t['description']}")
                  for t in spec["tests"]]
    return cases


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "case" in metafunc.fixturenames:
        metafunc.parametrize(("feature", "case"), _cases())


def test_unleash_case(feature: dict[str, Any], case: dict[str, Any]) -> None:
    # "random" stickiness must hold for any draw: 0% never on, 100% always on.
    for draw in ("a", "b", "c", "request-7"):
        assert _enabled(feature, _context(case["context"], draw)) is case["expectedResult"]
