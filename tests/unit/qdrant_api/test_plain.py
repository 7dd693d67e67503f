"""An application's own collection takes what Qdrant takes, refused with a 400 before a write."""

from __future__ import annotations

import pytest

from proxy.qdrant_api.plain import Plain, plain_version
from proxy.qdrant_api.shapes import Incoming
from proxy.vectors.base import Sparse, VectorsConfig
from rollout_rules.errors import RuleError


@pytest.mark.parametrize(("point", "field"), [
    (Incoming("not-a-uuid", None, [0.1, 0.2], {}), "points[0].id"),
    (Incoming(1, "text", None, {}), "points[0].vector"),
    (Incoming(1, None, [0.1], {}), "points[0].vector"),
    (Incoming(1, None, None, {}, {"sparse": Sparse([1], [0.5])}), "points[0].vector.sparse"),
    (Incoming(1, None, None, {}, {"dense": [0.1]}), "points[0].vector.dense"),
])
async def test_a_point_the_engine_would_refuse_is_a_400_naming_it(point: Incoming,
                                                                  field: str) -> None:
    own = Plain(None, plain_version("theirs", 2, "cosine"),  # type: ignore[arg-type]
                VectorsConfig(dense={"": (2, "cosine")}, single=True))
    with pytest.raises(RuleError) as refused:
        await own.upsert([point])  # refused before the store is reached (there is none)
    assert refused.value.field == field
