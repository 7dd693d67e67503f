"""ruff and mypy (strict) over the whole project: style and types are part of the test suite."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from tests.paths import REPO


@pytest.mark.parametrize("command", [["ruff", "check", "."], ["mypy"]], ids=["ruff", "mypy"])
def test_tool_is_clean(command: list[str]) -> None:
    tool = shutil.which(command[0], path=str(REPO / ".venv" / "bin")) or shutil.which(command[0])
    assert tool is not None, f"{command[0]} is not installed (it is in the dev group)"
    result = subprocess.run([tool, *command[1:]], capture_output=True, text=True, cwd=REPO,
                            check=False)
    assert result.returncode == 0, result.stdout + result.stderr
