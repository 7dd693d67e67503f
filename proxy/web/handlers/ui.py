"""``/ui``: a read-only status page, plain HTML and a little JS shipped with the package (no
build step, no CDN), and ``/ui/status.json``, what it draws: each alias's versions, state, set
and effective share, coverage by documents and by popularity, the guard's verdict, shadow
overlap, this proxy's per-version figures over the last minutes, the golden-set and online
quality table (``rollout_rules.online.quality_table``), and the last audit entries.
The page is open; its data asks for ``EMBEDSHIFT_UI_TOKEN`` when one is set (a Bearer header
the page sends, never a URL parameter, so it stays out of logs and history)."""

from __future__ import annotations

from importlib.resources import files

import msgspec
from aiohttp import web

from proxy.control.operator import Status, status_of
from proxy.state.base import AuditEntry
from proxy.web.auth import bearer, check_token
from proxy.web.errors import json_response
from proxy.web.history import Point, shadow_overlap
from proxy.web.keys import DRIFT, HISTORY, METRICS, OPERATOR, SEARCHER, SETTINGS, WATCHER
from rollout_rules.errors import NotFoundError, StoreUnavailable
from rollout_rules.online import QualityTable

STATIC = files("proxy.web") / "static"
ASSETS = {"ui.js": "text/javascript", "ui.css": "text/css"}
REFRESH_S = 2.0
AUDIT_SHOWN = 5


class AliasView(msgspec.Struct, frozen=True, kw_only=True):
    status: Status
    popularity_coverage: dict[str, float]
    shadow_overlap: dict[str, float]
    figures: dict[str, list[Point]]
    audit: list[AuditEntry]
    problem: str | None = None  # why part of it comes from this proxy's memory
    unavailable: dict[str, str] = msgspec.field(default_factory=dict)  # version: why
    drifted: dict[str, str] = msgspec.field(default_factory=dict)  # version: its served model's
    quality: QualityTable | None = None  # golden set and users, per version


class Page(msgspec.Struct, frozen=True, kw_only=True):
    refresh_s: float
    step_s: float
    aliases: list[AliasView]


async def page(request: web.Request) -> web.Response:
    return web.Response(body=(STATIC / "index.html").read_bytes(),
                        content_type="text/html", charset="utf-8",
                        headers={"Cache-Control": "no-cache"})


async def asset(request: web.Request) -> web.Response:
    name = request.match_info["asset"]
    if name not in ASSETS:
        raise web.HTTPNotFound(text=f"no asset {name[:50]!r} (the page has {', '.join(ASSETS)})")
    return web.Response(body=(STATIC / name).read_bytes(), content_type=ASSETS[name],
                        charset="utf-8", headers={"Cache-Control": "no-cache"})


async def status(request: web.Request) -> web.Response:
    token = request.app[SETTINGS].ui_token
    if token:
        check_token(bearer(request), token, off="EMBEDSHIFT_UI_TOKEN",
                    scheme="'Authorization: Bearer <ui token>' header")
    operator, history = request.app[OPERATOR], request.app[HISTORY]
    registry, watcher = request.app[METRICS].registry, request.app[WATCHER]
    views = []
    for alias, rollout in sorted(watcher.rollouts.items()):
        overlap, figures = dict(shadow_overlap(registry, alias)), history.of(alias)
        try:
            view = AliasView(
                status=await operator.status(alias),
                popularity_coverage=await operator.store.coverage(alias, "popularity"),
                audit=await operator.history(alias, AUDIT_SHOWN), shadow_overlap=overlap,
                figures=figures, quality=await operator.quality(alias))
        except (StoreUnavailable, NotFoundError) as exc:  # the page still shows what it can
            view = AliasView(
                status=status_of(rollout, watcher.coverage.get(alias, {})),
                popularity_coverage={}, audit=[], shadow_overlap=overlap, figures=figures,
                problem=f"the rule store did not answer ({exc}); shown from this proxy's memory")
        unavailable = {version: why for (name, version), why in
                       request.app[SEARCHER].unavailable.items() if name == alias}
        drifted = {v.name: f"model {v.model} drifted (probe cosine {found.cosine})"
                   for v in rollout.versions
                   if (found := request.app[DRIFT].findings.get(v.model)) and found.drifted}
        views.append(msgspec.structs.replace(view, unavailable=unavailable, drifted=drifted))
    return json_response(Page(refresh_s=REFRESH_S, step_s=history.step_s, aliases=views))
