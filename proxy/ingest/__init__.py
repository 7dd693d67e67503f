"""The data path: documents in (every active version at once), the backfill that re-encodes the
rest into the candidate most-queried first, and the coverage the routing gate reads."""
