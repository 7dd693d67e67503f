"""``POST /alerts/alertmanager``: Alertmanager's webhook (admin token), see proxy.control.alerts."""

from __future__ import annotations

from aiohttp import web

from proxy.control.alerts import Notification
from proxy.web.bodies import read_json
from proxy.web.errors import json_response
from proxy.web.keys import ALERTS

MAX_ALERT_BYTES = 4 * 1024 * 1024
"""Alertmanager sends up to ``max_alerts`` (100 in deploy/alerting) per notification, each with
its labels, annotations and generator URL, a few KiB apiece; a 4xx is never retried, so the
limit is sized for the 1,000 alerts ``Notification`` takes, not for a search body."""


async def alertmanager(request: web.Request) -> web.Response:
    notification = await read_json(request, Notification, MAX_ALERT_BYTES)
    return json_response(await request.app[ALERTS].handle(notification))
