"""A staged query is checked against the alias's rule and renamed for the version that runs it."""

from __future__ import annotations

import pytest

from proxy.serving.search import in_version, migrated_vectors, split_named
from proxy.vectors.base import Fusion, Nearest, Sparse, Stage
from rollout_rules.errors import RuleError
from rollout_rules.model import Carried, Rollout, Target, Version

V1 = Version(name="v1", model="org/a", dimensions=2, target=Target(collection="hs",
                                                                   vector_name="text-dense"))
V2 = Version(name="v2", model="org/b", dimensions=3, target=Target(collection="hs_v2"))
RULE = Rollout(alias="hs", versions=(V1, V2), stable="v1", candidate="v2", vector="text-dense",
               carried={"text-sparse": Carried(), "title": Carried(sparse=False, size=2)})
SPARSE = Sparse([4, 9], [0.5, 0.25])


def _hybrid(dense: list[float]) -> Stage:
    return Stage(Fusion("rrf"), 5, (Stage(Nearest("text-dense", dense), 10),
                                    Stage(Nearest("text-sparse", SPARSE), 10)))


def test_the_migrated_name_becomes_the_versions_own_and_carried_ones_stay() -> None:
    assert in_version(_hybrid([0.1, 0.2]), RULE, V1).prefetch[0].query == Nearest(
        "text-dense", [0.1, 0.2])
    in_v2 = in_version(_hybrid([0.1, 0.2, 0.3]), RULE, V2)
    assert [p.query for p in in_v2.prefetch] == [Nearest("", [0.1, 0.2, 0.3]),
                                                Nearest("text-sparse", SPARSE)]
    assert migrated_vectors(_hybrid([0.1, 0.2]), RULE) == [[0.1, 0.2]]


@pytest.mark.parametrize(("stage", "field", "says"), [
    (Stage(Nearest("bm42", SPARSE), 5), "using", "has no vector 'bm42'"),
    (Stage(Nearest("text-sparse", [0.1, 0.2]), 5), "using", "is sparse"),
    (Stage(Nearest("title", SPARSE), 5), "using", "is dense"),
    (Stage(Nearest("title", [0.1]), 5), "vector", "holds 2"),
    (Stage(Nearest("text-dense", SPARSE), 5), "using", "is dense"),
    (_hybrid([0.1, 0.2, 0.3]), "vector", "which has 2"),
])
def test_what_the_alias_does_not_hold_is_a_400_naming_the_field(stage: Stage, field: str,
                                                                 says: str) -> None:
    with pytest.raises(RuleError) as refused:
        in_version(stage, RULE, V1)
    assert refused.value.field == field and says in str(refused.value)


def test_a_written_points_vectors_split_into_the_migrated_and_the_carried() -> None:
    assert split_named(RULE, {"text-dense": [0.1, 0.2], "text-sparse": SPARSE}, "p") == (
        [0.1, 0.2], {"text-sparse": SPARSE})
    with pytest.raises(RuleError, match="has no vector 'other'") as refused:
        split_named(RULE, {"other": SPARSE}, "points[3].vector")
    assert refused.value.field == "points[3].vector.other"
    with pytest.raises(RuleError, match="dense vector of 2"):
        split_named(RULE, {"title": [0.1, 0.2, 0.3]}, "p")
