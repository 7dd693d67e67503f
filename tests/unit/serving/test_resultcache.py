"""The result cache answers only the same query to the same version, within its TTL and coverage."""

from __future__ import annotations

from msgspec.structs import replace

from proxy.models.catalog import default_rollout
from proxy.serving.resultcache import ResultCache
from proxy.vectors.base import Hit

HITS = [Hit(1, 0.9, {"title": "tent"})]


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_an_answer_is_kept_for_its_ttl_and_its_coverage() -> None:
    clock = Clock()
    cache = ResultCache(100, ttl_s=2.0, clock=clock)
    key = cache.key(default_rollout("p").version("v1"), "tent", 10, None, True)
    cache.put(key, 0.5, HITS)
    assert cache.get(key, 0.5) is HITS
    assert cache.get(key, 0.6) is None  # the backfill moved on since
    clock.now = 2.5
    assert cache.get(key, 0.5) is None


def test_the_key_holds_everything_that_decides_an_answer() -> None:
    v1, v2 = default_rollout("p").versions
    result_key = ResultCache(100, 2.0).key
    base = result_key(v1, "tent", 10, None, True)
    variants = [result_key(v2, "tent", 10, None, True),
                result_key(replace(v1, query_prefix="query: "), "tent", 10, None, True),
                result_key(replace(v1, target=replace(v1.target, collection="other")), "tent",
                           10, None, True),
                result_key(v1, "tents", 10, None, True),
                result_key(v1, "tent", 5, None, True),
                result_key(v1, "tent", 10, {"must": []}, True),
                result_key(v1, "tent", 10, None, False)]
    assert len({base, *variants}) == 1 + len(variants)
    assert result_key(v1, "tent", 10, None, True) == base
    changed = replace(v1, query_prefix="passage: ")  # the same name and collection, redeclared
    assert result_key(changed, "tent", 10, None, True) != base
    assert result_key(replace(v1), "tent", 10, None, True) == base  # an equal copy


def test_a_zero_ttl_or_size_turns_it_off() -> None:
    for cache in (ResultCache(100, 0), ResultCache(0, 2.0)):
        key = cache.key(default_rollout("p").version("v1"), "tent", 10, None, True)
        cache.put(key, None, HITS)
        assert cache.get(key, None) is None and len(cache) == 0
