"""The README stays true: its rule document parses and its commands match CI's."""

from __future__ import annotations

import re
import tomllib

from rollout_rules.model import parse_rollout
from tests.paths import REPO

README = (REPO / "README.md").read_text()


def test_the_readme_rule_document_is_valid() -> None:
    block = re.search(r"```toml\n(.*?)```", README, re.DOTALL)
    assert block is not None
    rollout = parse_rollout({"alias": "products", **tomllib.loads(block[1])})
    assert rollout.version("v2").target.payload_match == {"model_version": "v2"}


def test_ci_runs_the_readme_test_command() -> None:
    commands = re.findall(r"```sh\n(.*?)\n```", README)
    assert len(commands) == 2, "the README shows exactly two set-up commands"
    assert commands[1] in (REPO / ".ci" / "run").read_text()
