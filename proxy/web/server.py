"""Serving the app in production: guarded connections and a graceful stop.

Every connection is guarded (``GuardedHandler``, aiohttp's per-connection protocol with three
additions): over ``max_connections`` a new connection gets a JSON 503 and is closed; a request
head must arrive within ``header_timeout_s`` of its first byte (a client trickling headers is cut
off with a 408); an idle connection is closed after ``keepalive_s``. Bodies have their own
timeout (``proxy.web.bodies``). The listen backlog is ``backlog``.

``serve_until_signalled`` runs the app until SIGTERM or SIGINT, then drains: ``/readyz`` turns 503
at once and the proxy keeps serving for ``drain_s`` so load balancers notice, then it stops
listening, gives in-flight requests ``shutdown_timeout_s`` to finish, flushes spans and closes its
stores (the app's cleanup). A second signal exits at once (one arriving within ``SAME_SIGNAL_S`` of
the first is taken for the same signal delivered twice).
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Awaitable, Callable
from http import HTTPStatus

import structlog
from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from proxy.config import Settings
from proxy.web.errors import error_body, error_response
from proxy.web.keys import READY

log = structlog.get_logger("embedshift.server")
SAME_SIGNAL_S = 0.5
"""A second signal this soon after the first is the same one: a terminal sends Ctrl-C to the
whole process group and ``uv run`` forwards it to its child as well."""


def _raw_error(status: HTTPStatus, message: str) -> bytes:
    """A whole JSON error response, for a connection no request handler will answer."""
    body = error_body(status, status.phrase.replace(" ", ""), message)
    return (f"HTTP/1.1 {status.value} {status.phrase}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode() + body


class GuardedHandler(RequestHandler):
    """aiohttp's connection protocol, refusing connections over the cap and cutting off a
    request head that does not arrive in time. It reads three of the base class's private
    fields (request count, queued messages, current request); tests pin the behaviour."""

    def __init__(self, server: web.Server, settings: Settings, **kwargs: object) -> None:
        super().__init__(server, **kwargs)  # type: ignore[arg-type]
        self._settings = settings
        self._head_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        manager = self._manager
        if manager is not None and len(manager.connections) > self._settings.max_connections:
            log.warning("connection_refused", reason="max_connections",
                        limit=self._settings.max_connections)
            self._refuse(HTTPStatus.SERVICE_UNAVAILABLE, "too many open connections: the limit "
                         f"is {self._settings.max_connections}; retry shortly")

    def data_received(self, data: bytes) -> None:
        requests_before = self._request_count
        super().data_received(data)
        if self._request_count != requests_before:
            self._cancel_head_timer()  # a head arrived
        elif self._head_timer is None and self._current_request is None and not self._messages:
            loop = asyncio.get_running_loop()
            self._head_timer = loop.call_later(self._settings.header_timeout_s,
                                               self._head_too_slow, self._request_count)

    def connection_lost(self, exc: BaseException | None) -> None:
        self._cancel_head_timer()
        super().connection_lost(exc)

    def _head_too_slow(self, requests_then: int) -> None:
        self._head_timer = None
        if self._request_count == requests_then:
            log.info("connection_cut", reason="header_timeout",
                     timeout_s=self._settings.header_timeout_s)
            self._refuse(HTTPStatus.REQUEST_TIMEOUT, "the request head did not arrive within "
                         f"{self._settings.header_timeout_s:g}s")

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def handle_error(self, request: web.BaseRequest, status: int = 500,
                     exc: BaseException | None = None, message: str | None = None
                     ) -> web.StreamResponse:
        """What aiohttp answers before any handler runs (a request that is not valid HTTP), as
        JSON like every other error. The parser's own message is not echoed: it can quote the
        offending header, token and all."""
        super().handle_error(request, status, exc, message)  # logs; refuses if already answering
        phrase = HTTPStatus(status).phrase
        what = "not valid HTTP/1.1" if status < 500 else "could not be handled"
        response = error_response(status, phrase.replace(" ", ""), f"the request is {what} "
                                  f"({type(exc).__name__ if exc else phrase})")
        response.force_close()
        return response

    def _refuse(self, status: HTTPStatus, message: str) -> None:
        if self.transport is not None:
            self.transport.write(_raw_error(status, message))
        self.force_close()  # closes the transport once the answer is written


class GuardedSite(web.TCPSite):
    """A TCP site whose connections are ``GuardedHandler``s."""

    def __init__(self, runner: web.AppRunner, settings: Settings) -> None:
        super().__init__(runner, settings.host, settings.port, backlog=settings.backlog)
        self._settings = settings

    async def start(self) -> None:
        self._runner._reg_site(self)  # what BaseSite.start does
        server = self._runner.server
        assert server is not None, "runner.setup() first"

        def protocol() -> GuardedHandler:
            return GuardedHandler(server, self._settings, loop=asyncio.get_running_loop(),
                                  **server._kwargs)

        self._server = await asyncio.get_running_loop().create_server(
            protocol, self._host, self._port, backlog=self._backlog,
            reuse_address=self._reuse_address, reuse_port=self._reuse_port)
        sockets = self._server.sockets
        self._bound_port = sockets[0].getsockname()[1] if sockets else self._port


def make_runner(app: web.Application, settings: Settings) -> web.AppRunner:
    return web.AppRunner(app, access_log=None, keepalive_timeout=settings.keepalive_s,
                         shutdown_timeout=settings.shutdown_timeout_s, handle_signals=False)


async def serve_until_signalled(app: web.Application, settings: Settings,
                                on_listening: Callable[[str], None] | None = None,
                                after_cleanup: Callable[[], Awaitable[None]] | None = None
                                ) -> None:
    """Serve ``app`` until SIGTERM or SIGINT, then drain and stop (see the module)."""
    runner = make_runner(app, settings)
    await runner.setup()
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    first_at: list[float] = []

    def on_signal(signum: int) -> None:
        if stopping.is_set():
            if first_at and loop.time() - first_at[0] < SAME_SIGNAL_S:
                return  # one Ctrl-C, delivered twice: by the terminal and by `uv run`
            log.warning("second_signal", signal=signal.Signals(signum).name, action="exit now")
            os._exit(128 + signum)
        first_at.append(loop.time())
        log.info("draining", signal=signal.Signals(signum).name, drain_s=settings.drain_s,
                 shutdown_timeout_s=settings.shutdown_timeout_s)
        app[READY]["draining"] = True
        stopping.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)
    try:
        site = GuardedSite(runner, settings)
        await site.start()
        if on_listening is not None:
            on_listening(f"http://{settings.host}:{site.port}")
        await stopping.wait()
        await asyncio.sleep(settings.drain_s)  # still serving: load balancers see 503 first
    finally:
        stopping.set()  # from here on, a signal exits at once
        await runner.cleanup()  # stop listening, finish in-flight, then the app's cleanup
        if after_cleanup is not None:
            await after_cleanup()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
        log.info("stopped")
