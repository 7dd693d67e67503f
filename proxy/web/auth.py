"""Bearer tokens: the admin API, ingestion and the alert webhook need the admin token, a request
that names its own model version needs the override token. Compared in constant time, as bytes,
never echoed."""

from __future__ import annotations

import hmac

from aiohttp import web

from proxy.web.errors import Handler
from proxy.web.keys import SETTINGS
from rollout_rules.errors import AccessError, FeatureOff

OVERRIDE_TOKEN_HEADER = "X-Embedshift-Override-Token"


def check_token(given: str | None, expected: str | None, *, off: str, scheme: str) -> None:
    """Raise unless ``given`` equals ``expected``; FeatureOff (naming setting ``off``) when no
    token is configured. Header values arrive decoded with surrogate escapes, so a hostile
    byte compares as itself instead of failing to encode."""
    if not expected:
        raise FeatureOff(f"this is off on this proxy: set {off} to enable it")
    if given is None or not hmac.compare_digest(given.encode("utf-8", "surrogateescape"),
                                                expected.encode()):
        raise AccessError(f"a valid {scheme} is required")


def bearer(request: web.Request) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header; None for any other form."""
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def admin_only(handler: Handler) -> Handler:
    """``handler`` behind the admin token: the route table says which routes are (``Route.admin``)
    and the app wraps exactly those, so what is documented as secured is secured."""

    async def guarded(request: web.Request) -> web.StreamResponse:
        check_token(bearer(request), request.app[SETTINGS].admin_token,
                    off="EMBEDSHIFT_ADMIN_TOKEN", scheme="'Authorization: Bearer <token>' header")
        return await handler(request)

    return guarded


def check_override(request: web.Request) -> None:
    """A request may pick its version only with the override token (off unless configured)."""
    check_token(request.headers.get(OVERRIDE_TOKEN_HEADER),
                request.app[SETTINGS].override_token, off="EMBEDSHIFT_OVERRIDE_TOKEN",
                scheme=f"'{OVERRIDE_TOKEN_HEADER}' header to choose a version")
