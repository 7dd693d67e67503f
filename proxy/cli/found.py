"""How a CLI started in a project finds the proxy ``serve`` runs there.

``serve`` records where it runs (its data folder, its address, its process) in
``.embedshift/serve.json`` under the folder it was started in, readable by its user alone, and
removes the record when it stops. A command run in the same folder with no Redis, data folder,
host or port of its own reads the record (while that process lives) and talks to the same
embedded Redis and the same proxy; nothing is guessed otherwise, and a CLI never starts a
redis-server of its own (``embedshift redis start`` does, on purpose).
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

RECORD = Path(".embedshift") / "serve.json"
_OWN = {"data_dir": "EMBEDSHIFT_DATA_DIR", "host": "EMBEDSHIFT_HOST",
        "port": "EMBEDSHIFT_PORT"}


def write(here: Path, *, data_dir: Path, url: str, host: str, port: int) -> Path:
    """Record a running ``serve`` (started in ``here``) for the CLI; the path written."""
    path = here / RECORD
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    partial.touch(mode=0o600)
    partial.write_text(json.dumps({"pid": os.getpid(), "data_dir": str(data_dir), "url": url,
                                   "host": host, "port": port}))
    partial.replace(path)
    return path


def remove(path: Path) -> None:
    with contextlib.suppress(OSError):
        if json.loads(path.read_text()).get("pid") == os.getpid():
            path.unlink()


def read(here: Path) -> dict[str, Any] | None:
    """The record of a ``serve`` still running, started in ``here``; None otherwise."""
    try:
        record = json.loads((here / RECORD).read_text())
        os.kill(int(record["pid"]), 0)  # raises when no such process lives
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return record if isinstance(record, dict) else None


def overrides(here: Path, environ: Mapping[str, str], given: Mapping[str, Any]
              ) -> dict[str, Any]:
    """Settings taken from the running ``serve``'s record: only where neither the environment
    nor a flag says otherwise, and never over a configured Redis."""
    if environ.get("REDIS_URL") or given.get("redis_url") or environ.get("EMBEDSHIFT_CONFIG"):
        return {}
    record = read(here)
    if record is None:
        return {}
    return {key: record[key] for key, var in _OWN.items()
            if key in record and not environ.get(var) and given.get(key) is None}
