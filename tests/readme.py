"""The README's rule documents, for the tests that hold the README to what works."""

from __future__ import annotations

import re
import tomllib
from typing import Any

from tests.paths import REPO

README = (REPO / "README.md").read_text()


def toml_blocks() -> list[str]:
    return re.findall(r"```toml\n(.*?)```", README, re.DOTALL)


def layouts() -> dict[str, dict[str, Any]]:
    """The README's layout blocks by name (``# layout: NAME``), each a pair of versions."""
    found = {}
    for block in toml_blocks():
        named = re.match(r"# layout: (.+)\n", block)
        if named:
            found[named.group(1)] = tomllib.loads(block)
    return found
