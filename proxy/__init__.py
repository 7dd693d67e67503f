"""The embedshift proxy: I/O around the pure ``rollout_rules`` core (Redis, HTTP, models)."""
