"""Waiting for qdrant-client's version check, which runs in a thread of its own."""

from __future__ import annotations

import threading


def version_checked() -> None:
    """Wait for every pending qdrant-client version check (a warning it gives is then seen)."""
    for thread in threading.enumerate():
        if thread.name.endswith("(_check_compatibility)"):
            thread.join(10)
