"""The admin API under ``/admin``: the CLI's actions over HTTP, behind a bearer token.

Every write goes through ``proxy.operator`` (compare-and-set, audited, published) with the actor
``admin-api`` or what ``X-Embedshift-Actor`` says. With no token configured the API is off.
"""

from __future__ import annotations

import hmac
from typing import Annotated

import msgspec
from aiohttp import web

from proxy.handlers.common import Handler, error_response, json_response, read_json
from proxy.handlers.keys import OPERATOR, SETTINGS
from proxy.operator import Operator
from rollout_rules.errors import RuleError


class Action(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    reason: Annotated[str, msgspec.Meta(max_length=500)] = ""
    if_revision: int | None = None
    force: bool = False


class PercentAction(Action, frozen=True, kw_only=True, forbid_unknown_fields=True):
    percent: float


@web.middleware
async def require_token(request: web.Request, handler: Handler) -> web.StreamResponse:
    if not request.path.startswith(("/admin", "/v1/alerts")):
        return await handler(request)
    token = request.app[SETTINGS].admin_token
    if not token:
        return error_response(403, "Forbidden", "the admin API is off: set "
                                                "EMBEDSHIFT_ADMIN_TOKEN to enable it")
    given = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
    if not hmac.compare_digest(given.encode(), token.encode()):
        return error_response(401, "Unauthorized", "a valid 'Authorization: Bearer <token>' "
                                                   "header is required")
    return await handler(request)


def _operator(request: web.Request) -> Operator:
    base = request.app[OPERATOR]
    actor = request.headers.get("X-Embedshift-Actor", "admin-api")[:100]
    return Operator(base.store, actor)


async def list_aliases(request: web.Request) -> web.Response:
    return json_response(await _operator(request).statuses())


async def get_alias(request: web.Request) -> web.Response:
    return json_response(await _operator(request).status(request.match_info["alias"]))


async def history(request: web.Request) -> web.Response:
    raw = request.query.get("limit", "20")
    if not raw.isdigit() or not 1 <= int(raw) <= 1000:
        raise RuleError("limit", "an integer from 1 to 1000")
    return json_response(await _operator(request).history(request.match_info["alias"], int(raw)))


async def set_percent(request: web.Request) -> web.Response:
    body = await read_json(request, PercentAction)
    change = await _operator(request).set_percent(request.match_info["alias"], body.percent,
                                                  body.reason, body.if_revision)
    return json_response(change)


async def act(request: web.Request) -> web.Response:
    alias, action = request.match_info["alias"], request.match_info["action"]
    body = await read_json(request, Action) if request.can_read_body else Action()
    operator = _operator(request)
    if action == "pause":
        change = await operator.pause(alias, body.reason, body.if_revision)
    elif action == "resume":
        change = await operator.resume(alias, body.reason, body.if_revision)
    elif action == "rollback":
        change = await operator.rollback(alias, body.reason, body.if_revision)
    else:
        change = await operator.promote(alias, body.reason, body.force, body.if_revision)
    return json_response(change)


def add_routes(app: web.Application) -> None:
    app.router.add_get("/admin/aliases", list_aliases)
    app.router.add_get("/admin/aliases/{alias}", get_alias)
    app.router.add_get("/admin/aliases/{alias}/history", history)
    app.router.add_post("/admin/aliases/{alias}/percent", set_percent)
    app.router.add_post("/admin/aliases/{alias}/{action:pause|resume|rollback|promote}", act)
