"""The default pair of versions an alias is declared with when no document is given.

Both are 384-dimensional: the dangerous case, where a wrong routing still returns numbers.
"""

from __future__ import annotations

from rollout_rules.model import Rollout, Target, Version, check_rollout

V1_MODEL = "sentence-transformers/paraphrase-MiniLM-L3-v2"
V2_MODEL = "sentence-transformers/all-MiniLM-L6-v2"


def default_rollout(alias: str) -> Rollout:
    versions = (
        Version(name="v1", model=V1_MODEL, dimensions=384, normalized=True,
                target=Target(collection=f"{alias}_v1")),
        Version(name="v2", model=V2_MODEL, dimensions=384, normalized=True,
                target=Target(collection=f"{alias}_v2")),
    )
    return check_rollout(Rollout(alias=alias, versions=versions, stable="v1", candidate="v2"))
