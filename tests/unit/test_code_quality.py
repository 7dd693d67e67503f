"""ruff and mypy (strict) pass over the whole project, and every test module says what it proves."""

from __future__ import annotations

import ast
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


def test_every_test_module_opens_with_the_one_sentence_it_proves() -> None:
    missing = []
    for path in sorted((REPO / "tests").rglob("test_*.py")):
        docstring = ast.get_docstring(ast.parse(path.read_text()), clean=False) or ""
        summary = docstring.split("\n", 1)[0]
        if not summary.endswith(".") or (docstring != summary and "\n\n" not in docstring):
            missing.append(str(path.relative_to(REPO)))
    assert missing == [], "each needs a one-line docstring (then a blank line, if it goes on)"
