"""The README and the guide's pages (``docs/``), for the tests that hold them to what works.

``DOCS`` is the README followed by every page of the guide in its nav order: a test finds the
block it runs wherever it stands."""

from __future__ import annotations

import re
import tomllib
from typing import Any

import yaml

from tests.paths import REPO

README = (REPO / "README.md").read_text()
NAV = [next(iter(item.values())) for item in
       yaml.safe_load((REPO / "mkdocs.yml").read_text())["nav"]]
PAGES = {page: (REPO / "docs" / page).read_text() for page in NAV}
DOCS = "\n".join([README, *PAGES.values()])


def toml_blocks() -> list[str]:
    return re.findall(r"```toml\n(.*?)```", DOCS, re.DOTALL)


def layouts() -> dict[str, dict[str, Any]]:
    """The guide's layout blocks by name (``# layout: NAME``), each a pair of versions."""
    found = {}
    for block in toml_blocks():
        named = re.match(r"# layout: (.+)\n", block)
        if named:
            found[named.group(1)] = tomllib.loads(block)
    return found
