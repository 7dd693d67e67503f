"""``POST /alerts/alertmanager``: Alertmanager's webhook (admin token), see proxy.control.alerts."""

from __future__ import annotations

from aiohttp import web

from proxy.control.alerts import Notification
from proxy.web.bodies import read_json
from proxy.web.errors import json_response
from proxy.web.keys import ALERTS


async def alertmanager(request: web.Request) -> web.Response:
    notification = await read_json(request, Notification)
    return json_response(await request.app[ALERTS].handle(notification))
