"""The README stays true: its rule documents parse and CI runs its test command."""

from __future__ import annotations

import re
import tomllib

import msgspec

from rollout_rules.model import CoverageGate, parse_rollout
from tests.paths import REPO
from tests.readme import README, layouts, toml_blocks


def test_the_readme_rule_documents_are_valid() -> None:
    blocks = [b for b in toml_blocks() if not b.startswith("# layout:")]
    rules = [b for b in blocks if "[[versions]]" in b]
    rollouts = [parse_rollout({"alias": "products", **tomllib.loads(b)}) for b in rules]
    assert [r.alias for r in rollouts] == ["articles", "products", "kb"]
    assert rollouts[1].coverage_gate == CoverageGate()  # the default, written out
    gates = [b for b in blocks if "[[versions]]" not in b]
    stepped = msgspec.convert(tomllib.loads(gates[0])["coverage_gate"], type=CoverageGate)
    assert [s.max_percent for s in stepped.steps] == [5, 25, 50, 100]


def test_the_readme_shows_three_layouts_that_parse() -> None:
    found = layouts()
    assert list(found) == ["separate collections", "one collection, a named vector each",
                           "one collection, told apart by payload"]
    for layout in found.values():
        parse_rollout({"alias": "docs", "stable": "v1", **layout})


def test_ci_runs_the_readme_test_command() -> None:
    section = README.split("\n## Two commands\n", 1)[1].split("\n## ", 1)[0]
    run, test = re.findall(r"```sh\n(.*?)\n```", section)  # exactly two, in that order
    assert "embedshift serve" in run and "pytest" in test
    assert test in (REPO / ".ci" / "run").read_text()
