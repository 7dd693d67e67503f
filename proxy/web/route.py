"""The shape of one HTTP route: what the app registers, the auth wraps and the OpenAPI document
describes (the table itself is ``proxy.web.routes``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from proxy.web.errors import Handler


@dataclass(frozen=True)
class Route:
    method: str
    path: str
    handler: Handler
    summary: str
    body: type | None = None  # the request body's msgspec type
    answer: type | None = None  # the 200 answer's msgspec type
    admin: bool = False  # behind the admin token
    body_required: bool = True
    parameters: tuple[dict[str, Any], ...] = ()  # beyond the path's own {alias}
