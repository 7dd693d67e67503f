"""The README stays true: its rule document parses and CI runs its test command."""

from __future__ import annotations

import re
import tomllib

from rollout_rules.model import parse_rollout
from tests.paths import REPO

README = (REPO / "README.md").read_text()


def test_the_readme_rule_documents_are_valid() -> None:
    blocks = re.findall(r"```toml\n(.*?)```", README, re.DOTALL)
    rollouts = [parse_rollout({"alias": "products", **tomllib.loads(b)}) for b in blocks]
    assert [r.alias for r in rollouts] == ["articles", "products"]
    assert rollouts[1].version("v2").target.payload_match == {"model_version": "v2"}


def test_ci_runs_the_readme_test_command() -> None:
    section = README.split("\n## Two commands\n", 1)[1].split("\n## ", 1)[0]
    run, test = re.findall(r"```sh\n(.*?)\n```", section)  # exactly two, in that order
    assert "embedshift serve" in run and "pytest" in test
    assert test in (REPO / ".ci" / "run").read_text()
