"""The in-memory vector store for fast unit tests: the server adapter over qdrant-client's own
in-memory mode, rather than a search and filter engine of our own.

qdrant-client's local mode implements Qdrant's API (collections, named vectors, payloads, the
whole filter language) by brute force in Python, so it answers as a server would on a small
corpus, and it passes the same contract suite as the embedded engine. It runs searches on the
event loop: unit tests only, never serving.
"""

from __future__ import annotations

from qdrant_client import AsyncQdrantClient

from proxy.vectors.server import ServerStore


class MemoryStore(ServerStore):
    payload_indexes = False

    def __init__(self) -> None:
        super().__init__(AsyncQdrantClient(location=":memory:"))
