"""Vector stores behind one protocol: a Qdrant server, Qdrant's engine embedded in-process, and
an in-memory store for unit tests; envelope checks and Qdrant filters in one place."""
