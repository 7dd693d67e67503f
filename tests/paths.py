"""Where the tests find the read-only shared data (beside the repository, never committed)."""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "tests" / "fixtures"
SHARED = Path(os.environ.get("EMBEDSHIFT_SHARED_DIR", REPO.parent / "shared"))


def missing_reason(path: Path) -> str:
    return (f"{path} is absent: the shared reference data is not committed with the project; "
            "put it beside the repository or set EMBEDSHIFT_SHARED_DIR")


def shared_path(*parts: str) -> Path:
    """A path under ../shared, or skip the test saying what is missing and why."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(missing_reason(path))
    return path


@contextlib.contextmanager
def held(lock: Path) -> Iterator[None]:
    """``lock`` held exclusively (flock): what one test process builds under it (the models,
    Infinity's venv), a parallel worker waits for instead of building beside it."""
    lock.parent.mkdir(parents=True, exist_ok=True)
    with lock.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
