"""The read path: a query's text to a version's hits, knowing nothing of HTTP."""
