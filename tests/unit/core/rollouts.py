"""Rule documents for unit tests, built the way an operator writes them."""

from __future__ import annotations

from typing import Any

from rollout_rules.model import Rollout, parse_rollout


def document(**changes: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "alias": "products",
        "versions": [
            {"name": "v1", "model": "m/l3", "dimensions": 384, "target": {"collection": "p_v1"}},
            {"name": "v2", "model": "m/l6", "dimensions": 384, "target": {"collection": "p_v2"}},
        ],
        "stable": "v1",
        "candidate": "v2",
        "percent": 10,
    }
    doc.update(changes)
    return doc


def rollout(**changes: Any) -> Rollout:
    return parse_rollout(document(**changes))
