"""The OpenAPI document, derived from the route table, the request and answer types, the rule
model's name pattern and the package's version: nothing in it is written twice."""

from __future__ import annotations

import importlib.metadata
from collections.abc import Sequence
from typing import Any

import msgspec
from aiohttp import web

from proxy.web.errors import json_response
from proxy.web.keys import OPENAPI
from proxy.web.route import Route
from rollout_rules.model import NAME_PATTERN

_ERRORS = [(400, "bad input"), (401, "token missing or wrong"),
           (403, "feature off (admin API, version overrides)"), (404, "unknown alias"),
           (408, "body too slow"), (409, "conflict"), (413, "body too large"),
           (415, "unsupported Content-Encoding"), (503, "backend or rules unavailable")]


async def serve_document(request: web.Request) -> web.Response:
    return json_response(request.app[OPENAPI])


def document(routes: Sequence[Route]) -> dict[str, Any]:
    types = sorted({t for r in routes for t in (r.body, r.answer) if t is not None},
                   key=lambda t: t.__name__)
    schemas, components = msgspec.json.schema_components(
        types, ref_template="#/components/schemas/{name}")
    ref = dict(zip(types, schemas, strict=True))
    components["Error"] = {"type": "object", "properties": {"error": {"type": "object"}}}
    paths: dict[str, Any] = {}
    for route in routes:
        paths.setdefault(route.path, {})[route.method.lower()] = _operation(route, ref)
    return {"openapi": "3.0.3",
            "info": {"title": "embedshift", "version": importlib.metadata.version("embedshift")},
            "paths": paths, "components": {"schemas": components, "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"}}}}


def _operation(route: Route, ref: dict[type, Any]) -> dict[str, Any]:
    parameters = list(route.parameters)
    if "{alias}" in route.path:
        parameters.insert(0, {"name": "alias", "in": "path", "required": True,
                              "schema": {"type": "string", "pattern": NAME_PATTERN}})
    ok: dict[str, Any] = {"description": "OK"}
    if route.answer is not None:
        ok["content"] = {"application/json": {"schema": ref[route.answer]}}
    operation: dict[str, Any] = {"summary": route.summary, "responses": {"200": ok, **{
        str(code): {"description": text, "content": {"application/json": {
            "schema": {"$ref": "#/components/schemas/Error"}}}} for code, text in _ERRORS}}}
    if parameters:
        operation["parameters"] = parameters
    if route.body is not None:
        operation["requestBody"] = {"required": route.body_required, "content": {
            "application/json": {"schema": ref[route.body]}}}
    if route.admin:
        operation["security"] = [{"bearer": []}]
    return operation
