"""The README and the guide stay true: rules parse, the site builds, CI runs the test command."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import msgspec

from rollout_rules.model import CoverageGate, Experiment, parse_rollout
from tests.paths import REPO
from tests.readme import DOCS, PAGES, README, layouts, toml_blocks


def test_the_readme_rule_documents_are_valid() -> None:
    blocks = [b for b in toml_blocks() if not b.startswith("# layout:")]
    rules = [b for b in blocks if "[[versions]]" in b]
    rollouts = [parse_rollout({"alias": "products", **tomllib.loads(b)}) for b in rules]
    by_alias = {r.alias: r for r in rollouts}
    assert sorted(by_alias) == ["articles", "kb", "products"]
    assert by_alias["products"].coverage_gate == CoverageGate()  # the default, written out
    gates = [b for b in blocks if "[[versions]]" not in b and "[coverage_gate]" in b]
    stepped = msgspec.convert(tomllib.loads(gates[0])["coverage_gate"], type=CoverageGate)
    assert [s.max_percent for s in stepped.steps] == [5, 25, 50, 100]
    experiments = [b for b in blocks if "[[versions]]" not in b and "[experiment]" in b]
    shown = msgspec.convert(tomllib.loads(experiments[0])["experiment"], type=Experiment)
    assert (shown.mode, shown.share) == ("interleave", 0.1)
    assert by_alias["products"].experiment == shown  # the reference's rule declares one too
    hybrid = [b for b in blocks if "[[versions]]" not in b and "[carried." in b]
    carried = parse_rollout({**tomllib.loads(hybrid[0]), "alias": "kb", "stable": "v1",
                             "versions": [{"name": "v1", "model": "org/m", "dimensions": 384,
                                           "target": {"collection": "kb"}}]})
    assert carried.vector == "text-dense" and carried.carried["text-sparse"].modifier == "idf"
    assert carried.carried["title-dense"].size == 384


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


def test_the_guide_builds_strictly(tmp_path: Path) -> None:
    """`mkdocs build --strict`: every page in the nav, every link and image found."""
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir",
                           str(tmp_path / "site")], cwd=REPO, capture_output=True, text=True,
                          timeout=300, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
                          check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "site" / "migrating" / "index.html").exists()


def test_every_page_is_in_the_guide_and_none_cites_an_issue() -> None:
    """Readers cannot see the tracker: no "#22" in the README or a page (project history is
    in the CHANGELOG)."""
    on_disk = {p.name for p in (REPO / "docs").glob("*.md")} - {"index.md"}
    assert on_disk <= set(PAGES) | {"report.md"}
    cited = re.findall(r"(?<![\w&/#-])#\d{1,3}\b", DOCS)
    assert cited == []
