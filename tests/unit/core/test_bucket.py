"""Buckets are Unleash's murmur3: in range, sticky across processes, uniform."""

from __future__ import annotations

import subprocess
import sys

import mmh3
import numpy as np
from hypothesis import given
from hypothesis import strategies as st
from scipy.stats import chisquare

from loadtest.murmur3_reference import murmur3_32
from rollout_rules.bucket import NORMALISER, bucket
from tests.paths import REPO


@given(st.binary(max_size=64), st.integers(min_value=0, max_value=2**32 - 1))
def test_reference_murmur3_agrees_with_mmh3(data: bytes, seed: int) -> None:
    assert murmur3_32(data, seed) == mmh3.hash(data, seed, signed=False)


def test_murmur3_published_vectors() -> None:
    # MurmurHash3_x86_32 test vectors (SMHasher): "" seed 0 -> 0, "" seed 1 -> 0x514E28B7.
    for data, seed, expected in [(b"", 0, 0), (b"", 1, 0x514E28B7), (b"hello", 0, 0x248BFA47)]:
        assert murmur3_32(data, seed) == expected
        assert mmh3.hash(data, seed, signed=False) == expected  # what bucket() runs on


@given(st.text(max_size=40), st.text(max_size=40))
def test_buckets_lie_in_range_and_are_sticky(group: str, key: str) -> None:
    first = bucket(group, key)
    assert 1 <= first <= NORMALISER
    assert bucket(group, key) == first
    assert 1 <= bucket(group, key, 100) <= 100


def test_buckets_are_the_same_in_another_process() -> None:
    keys = [f"user-{i}" for i in range(200)]
    here = [bucket("products", k) for k in keys]
    code = ("from rollout_rules.bucket import bucket;"
            "print([bucket('products', f'user-{i}') for i in range(200)])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=REPO, env={"PYTHONHASHSEED": "12345", "PATH": ""})
    assert out.stdout.strip() == str(here)


def test_a_million_ids_spread_uniformly_over_the_buckets() -> None:
    counts = np.zeros(NORMALISER, dtype=np.int64)
    for i in range(1_000_000):
        counts[bucket("products", f"user-{i}") - 1] += 1
    result = chisquare(counts)
    assert result.pvalue > 0.001, f"chi-square p={result.pvalue:.2g}: buckets are not uniform"
    coarse = counts.reshape(100, 100).sum(axis=1)
    assert chisquare(coarse).pvalue > 0.001
    assert coarse.min() > 9_500 and coarse.max() < 10_500
