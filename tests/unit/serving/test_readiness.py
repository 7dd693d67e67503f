"""Readiness is decided in one place: started, not draining, rules read; and per version."""

from __future__ import annotations

from proxy.models.catalog import default_rollout
from proxy.models.loader import encoder_key
from proxy.serving.readiness import Lifecycle, version_detail


def test_ready_once_started_with_rules_and_not_draining() -> None:
    assert not Lifecycle().ready(0.1)
    assert not Lifecycle(started=True).ready(None)  # never read the rules
    assert Lifecycle(started=True).ready(0.1)
    assert not Lifecycle(started=True, draining=True).ready(0.1)


def test_a_version_is_unavailable_with_its_reason_or_missing_while_it_loads() -> None:
    rollout = default_rollout("p")
    loaded = {encoder_key(rollout.version("v1"))}
    unavailable, missing = version_detail({"p": rollout}, loaded, {})
    assert (unavailable, missing) == ({}, ["p/v2"])
    unavailable, missing = version_detail({"p": rollout}, loaded,
                                          {("p", "v2"): "its model will not load"})
    assert (unavailable, missing) == ({"p/v2": "its model will not load"}, [])
