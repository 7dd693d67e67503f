"""``/healthz`` (alive), ``/readyz`` (can answer, with detail), ``/metrics``.

Ready means: start-up has loaded and checked every version it could, a rules snapshot exists and
the proxy is not draining for a shutdown. A version that cannot serve (its model will not load, its
collection was encoded differently) is named under ``unavailable`` with the reason but does not
make the proxy unready: every instance would see the same fault, and pulling them all would take
every alias out for one alias's mistake. ``models_missing`` lists versions still loading.
Redis being down, or losing its data, does not make a proxy unready: every proxy sees that at
once, and pulling them all would turn a control-plane fault into a search outage. It serves the
last good rules (fail static), and the detail, ``embedshift_rules_store_up`` and
``embedshift_rules_vanished`` say so. A served model's drift or failing service is named under
``served_models`` (its last probe, its calls) without making the proxy unready, for the same reason.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from proxy.web.errors import json_response
from proxy.web.keys import DRIFT, METRICS, READY, VERSIONS, WATCHER
from rollout_rules.model import State


async def healthz(request: web.Request) -> web.Response:
    return json_response({"status": "alive"})


async def readyz(request: web.Request) -> web.Response:
    watcher = request.app[WATCHER]
    unavailable, missing = request.app[VERSIONS].detail(watcher.rollouts)
    rules: dict[str, Any] = {
        "aliases": {alias: r.revision for alias, r in watcher.rollouts.items()},
        "store": "connected" if watcher.connected else "unreachable: serving the last good rules",
        "age_s": None if watcher.age_s is None else round(watcher.age_s, 3),
        "rejected": watcher.rejected,
        "vanished": watcher.vanished,
    }
    if watcher.last_error:
        rules["last_error"] = watcher.last_error
    unconfirmed = watcher.store.unconfirmed
    if unconfirmed:  # a sentinel-managed primary whose replicas did not confirm these writes
        rules["not_on_a_replica"] = unconfirmed
    lifecycle = request.app[READY]
    ready = lifecycle.ready(watcher.age_s)
    detail = {"ready": ready, "draining": lifecycle.draining, "rules": rules,
              "models_missing": missing, "unavailable": unavailable,
              "served_models": request.app[DRIFT].detail()}
    return json_response(detail, 200 if ready else 503)


async def metrics(request: web.Request) -> web.Response:
    watcher, registry = request.app[WATCHER], request.app[METRICS]
    registry.rules_connected.set(1 if watcher.connected else 0)
    registry.rules_age.set(watcher.age_s if watcher.age_s is not None else -1)
    for alias in set(watcher.rollouts) | set(watcher.vanished):
        registry.vanished.labels(alias).set(1 if alias in watcher.vanished else 0)
    for alias, rollout in watcher.rollouts.items():
        registry.revision.labels(alias).set(rollout.revision)
        registry.set_percent.labels(alias).set(rollout.percent)
        for state in State:
            registry.state.labels(alias, state.value).set(1 if rollout.state == state else 0)
    for alias, coverage in watcher.coverage.items():
        for version, fraction in coverage.items():
            registry.coverage.labels(alias, version).set(fraction)
    request.app[DRIFT].export()
    body = generate_latest(registry.registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})
