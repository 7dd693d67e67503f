"""The admin API under ``/admin``: the CLI's actions over HTTP, behind a bearer token.

Every write goes through the operator in ``proxy.control`` (compare-and-set, audited, published)
with the actor ``admin-api`` or what ``X-Embedshift-Actor`` says. The bearer token is checked in
``proxy.web.auth``; with no token configured the API is off.

A write that changes a rule is answered once this proxy serves it (read-your-writes: a search
through the same proxy right after the answer sees the change); other proxies follow through the
change feed a moment later. That re-read is bounded and never fails the write
(``RuleWatcher.follow``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated

import msgspec
from aiohttp import web

from proxy.control import ramp
from proxy.control.operator import Operator
from proxy.state.base import Change
from proxy.web.bodies import read_json
from proxy.web.errors import json_response
from proxy.web.keys import OPERATOR, WATCHER
from rollout_rules.errors import NotFoundError, RuleError
from rollout_rules.ramp import ramp_action


class Action(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    reason: Annotated[str, msgspec.Meta(max_length=500)] = ""
    if_revision: int | None = None
    force: bool = False


class PercentAction(Action, frozen=True, kw_only=True, forbid_unknown_fields=True):
    percent: float


ACTOR_HEADER = "X-Embedshift-Actor"


def operator_of(request: web.Request) -> Operator:
    base = request.app[OPERATOR]
    actor = request.headers.get(ACTOR_HEADER, "admin-api")[:100]
    try:
        actor.encode()
    except UnicodeEncodeError:  # bytes that are not UTF-8 reach us as surrogates
        raise RuleError(ACTOR_HEADER, "must be UTF-8 text") from None
    return Operator(base.store, actor, answers=base.answers)


async def list_aliases(request: web.Request) -> web.Response:
    return json_response(await operator_of(request).statuses())


async def get_alias(request: web.Request) -> web.Response:
    return json_response(await operator_of(request).status(request.match_info["alias"]))


async def quality(request: web.Request) -> web.Response:
    return json_response(await operator_of(request).quality(request.match_info["alias"]))


async def history(request: web.Request) -> web.Response:
    raw = request.query.get("limit", "20")
    if not raw.isdigit() or not 1 <= int(raw) <= 1000:
        raise RuleError("limit", "an integer from 1 to 1000")
    return json_response(await operator_of(request).history(request.match_info["alias"], int(raw)))


async def set_percent(request: web.Request) -> web.Response:
    body = await read_json(request, PercentAction)
    alias = request.match_info["alias"]
    change = await operator_of(request).set_percent(alias, body.percent, body.reason,
                                                  body.if_revision)
    return await _served(request, alias, change)


async def _served(request: web.Request, alias: str, answer: object) -> web.Response:
    """The write's answer, once this proxy's watcher has re-read the alias it wrote."""
    await request.app[WATCHER].follow(alias)
    return json_response(answer)


Act = Callable[[Operator, str, Action], Awaitable[Change]]


async def _act(request: web.Request, act: Act) -> web.Response:
    """Run one state action on the alias in the path, with the optional body's reason,
    expected revision and force."""
    body = await _optional_body(request)
    alias = request.match_info["alias"]
    return await _served(request, alias, await act(operator_of(request), alias, body))


async def _optional_body(request: web.Request) -> Action:
    """The action's body; no body means no reason, no expected revision, no force."""
    return await read_json(request, Action) if request.can_read_body else Action()


async def delete(request: web.Request) -> web.Response:
    """Delete an alias on purpose; one the store lost but this proxy serves from memory
    (vanished) is deleted too, from that memory."""
    body = await _optional_body(request)
    alias = request.match_info["alias"]
    watcher = request.app[WATCHER]
    if alias in watcher.vanished and alias in watcher.rollouts:
        entry = await operator_of(request).delete_vanished(watcher.rollouts[alias], body.reason)
    else:
        entry = await operator_of(request).delete(alias, body.reason, body.if_revision)
    return await _served(request, alias, entry)


async def restore(request: web.Request) -> web.Response:
    """Write this proxy's last good rule back to a store that lost it."""
    alias = request.match_info["alias"]
    snapshot = request.app[WATCHER].rollouts.get(alias)
    if snapshot is None:
        raise NotFoundError(alias)
    body = await _optional_body(request)
    coverage = request.app[WATCHER].coverage.get(alias, {})
    return await _served(request, alias,
                         await operator_of(request).restore(snapshot, body.reason, coverage))


async def pause(request: web.Request) -> web.Response:
    return await _act(request, lambda op, alias, b: op.pause(alias, b.reason, b.if_revision))


async def resume(request: web.Request) -> web.Response:
    return await _act(request, lambda op, alias, b: op.resume(alias, b.reason, b.if_revision))


async def retire(request: web.Request) -> web.Response:
    return await _act(request, lambda op, alias, b: op.retire(alias, b.reason, b.if_revision,
                                                              b.force))


async def rollback(request: web.Request) -> web.Response:
    return await _act(request, lambda op, alias, b: op.rollback(alias, b.reason, b.if_revision))


async def promote(request: web.Request) -> web.Response:
    return await _act(request, lambda op, alias, b: op.promote(alias, b.reason, b.force,
                                                               b.if_revision))


class RampRequest(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    steps: Annotated[list[float], msgspec.Meta(min_length=1, max_length=100)]
    every_s: float
    promote: bool = True  # a last step of 100% judged healthy promotes the candidate


async def start_ramp(request: web.Request) -> web.Response:
    body = await read_json(request, RampRequest)
    plan = await ramp.start_ramp(operator_of(request).store, request.match_info["alias"],
                                 tuple(body.steps), body.every_s, operator_of(request).actor,
                                 promote=body.promote)
    return json_response(plan)


async def control_ramp(request: web.Request) -> web.Response:
    plan = await ramp.control_ramp(operator_of(request).store, request.match_info["alias"],
                                   ramp_action(request.match_info["action"]))
    return json_response(plan)
