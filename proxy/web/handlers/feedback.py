"""``POST /v1/feedback``: what users did with answers, joined to them (``proxy.online.feedback``).

It needs the feedback key (``EMBEDSHIFT_FEEDBACK_KEY``, else the Qdrant read key), as a Bearer
token or Qdrant's ``api-key`` header: with neither configured it is off, so nobody can send
evidence to a proxy that did not ask for it.
"""

from __future__ import annotations

from aiohttp import web

from proxy.online.feedback import FeedbackBatch
from proxy.web.auth import bearer, check_token
from proxy.web.bodies import read_json
from proxy.web.errors import json_response
from proxy.web.keys import FEEDBACK, SETTINGS

MAX_FEEDBACK_BYTES = 1024 * 1024


async def feedback(request: web.Request) -> web.Response:
    settings = request.app[SETTINGS]
    check_token(bearer(request) or request.headers.get("api-key"),
                settings.feedback_key or settings.qdrant_read_key,
                off="EMBEDSHIFT_FEEDBACK_KEY",
                scheme="'Authorization: Bearer <key>' (or 'api-key') header")
    batch = await read_json(request, FeedbackBatch, MAX_FEEDBACK_BYTES)
    return json_response(await request.app[FEEDBACK].take(batch))
