"""Shared state: Redis (the embedded server, the client and its error mapping, the rule store
with coverage and popularity) and the in-memory rules snapshot the request path reads; plus an
in-memory rule store that passes the same contract tests, for fast unit tests."""
