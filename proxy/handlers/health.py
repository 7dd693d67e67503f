"""``/healthz`` (alive), ``/readyz`` (can answer, with detail), ``/metrics``, ``/openapi.json``.

Ready means: every version of every alias has its encoder loaded and a rules snapshot exists.
Redis being down does not make a proxy unready: every proxy loses Redis at once, and pulling
them all would turn a control-plane outage into a search outage. It serves the last good
rules (fail static), and the detail and ``embedshift_rules_store_up`` say so.
"""

from __future__ import annotations

from typing import Any

import msgspec
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from proxy.handlers.admin import Action, PercentAction
from proxy.handlers.common import json_response
from proxy.handlers.keys import METRICS, READY, SEARCHER, WATCHER
from proxy.search import SearchRequest, SearchResponse, encoder_key


async def healthz(request: web.Request) -> web.Response:
    return json_response({"status": "alive"})


async def readyz(request: web.Request) -> web.Response:
    watcher, searcher = request.app[WATCHER], request.app[SEARCHER]
    missing = [f"{alias}/{v.name}" for alias, rollout in watcher.rollouts.items()
               for v in rollout.versions if encoder_key(v) not in searcher.encoders]
    rules: dict[str, Any] = {
        "aliases": {alias: r.revision for alias, r in watcher.rollouts.items()},
        "store": "connected" if watcher.connected else "unreachable: serving the last good rules",
        "age_s": None if watcher.age_s is None else round(watcher.age_s, 3),
        "rejected": watcher.rejected,
    }
    if watcher.last_error:
        rules["last_error"] = watcher.last_error
    ready = bool(watcher.rollouts) and not missing and request.app[READY].get("started", False)
    detail = {"ready": ready, "rules": rules, "models_missing": missing,
              **request.app[READY].get("detail", {})}
    return json_response(detail, 200 if ready else 503)


async def metrics(request: web.Request) -> web.Response:
    watcher, registry = request.app[WATCHER], request.app[METRICS]
    registry.rules_connected.set(1 if watcher.connected else 0)
    registry.rules_age.set(watcher.age_s if watcher.age_s is not None else -1)
    for alias, coverage in watcher.coverage.items():
        for version, fraction in coverage.items():
            registry.coverage.labels(alias, version).set(fraction)
    body = generate_latest(registry.registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def openapi(request: web.Request) -> web.Response:
    return json_response(OPENAPI)


def _document() -> dict[str, Any]:
    (search_in, search_out, percent, action), components = msgspec.json.schema_components(
        [SearchRequest, SearchResponse, PercentAction, Action],
        ref_template="#/components/schemas/{name}")

    def body(schema: dict[str, Any]) -> dict[str, Any]:
        return {"required": True, "content": {"application/json": {"schema": schema}}}

    def answers(schema: dict[str, Any] | None = None) -> dict[str, Any]:
        ok: dict[str, Any] = {"description": "OK"}
        if schema is not None:
            ok["content"] = {"application/json": {"schema": schema}}
        errors = {str(code): {"description": text, "content": {"application/json": {
            "schema": {"$ref": "#/components/schemas/Error"}}}}
            for code, text in [(400, "bad input"), (401, "token missing or wrong"),
                               (404, "unknown alias"), (409, "conflict"),
                               (413, "body too large"), (503, "backend unavailable")]}
        return {"200": ok, **errors}

    alias = {"name": "alias", "in": "path", "required": True,
             "schema": {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9_.\\-]{0,63}$"}}
    admin: list[dict[str, list[str]]] = [{"bearer": []}]
    components["Error"] = {"type": "object", "properties": {"error": {"type": "object"}}}
    paths: dict[str, Any] = {
        "/v1/aliases/{alias}/search": {"post": {
            "summary": "Search an alias with text", "parameters": [alias, {
                "name": "X-Embedshift-Version", "in": "header", "required": False,
                "schema": {"type": "string"}}],
            "requestBody": body(search_in), "responses": answers(search_out)}},
        "/healthz": {"get": {"summary": "Alive", "responses": {"200": {"description": "OK"}}}},
        "/readyz": {"get": {"summary": "Ready, with detail", "responses": {
            "200": {"description": "ready"}, "503": {"description": "not ready"}}}},
        "/metrics": {"get": {"summary": "Prometheus metrics",
                             "responses": {"200": {"description": "OK"}}}},
        "/admin/aliases": {"get": {"summary": "Every alias's rollout", "security": admin,
                                   "responses": answers()}},
        "/admin/aliases/{alias}": {"get": {"summary": "One alias's rollout", "security": admin,
                                           "parameters": [alias], "responses": answers()}},
        "/admin/aliases/{alias}/history": {"get": {
            "summary": "Audit trail", "security": admin, "parameters": [alias, {
                "name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1,
                                                           "maximum": 1000}}],
            "responses": answers()}},
        "/admin/aliases/{alias}/percent": {"post": {
            "summary": "Ramp the candidate", "security": admin, "parameters": [alias],
            "requestBody": body(percent), "responses": answers()}},
    }
    for name in ("pause", "resume", "rollback", "promote"):
        paths[f"/admin/aliases/{{alias}}/{name}"] = {"post": {
            "summary": name.capitalize(), "security": admin, "parameters": [alias],
            "requestBody": {**body(action), "required": False}, "responses": answers()}}
    return {"openapi": "3.0.3", "info": {"title": "embedshift", "version": "0.1.0"},
            "paths": paths, "components": {"schemas": components, "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"}}}}


OPENAPI = _document()


def add_routes(app: web.Application) -> None:
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/openapi.json", openapi)
