"""Serving the app in production: guarded connections and a graceful stop.

Every connection passes a door (``Door``) and is then guarded (``GuardedHandler``, aiohttp's
per-connection protocol with additions). At the door, ``proxy.web.connections`` decides: within the
cap (sized from the descriptor limit, logged at start) and the client's share a connection is let
in; over either, the longest-idle connection is closed to make room; when none is idle the new one
gets a JSON 503 (``Refusal``), sent once its request head has been read and followed by a gentle
close, so the client reads the answer rather than a reset. Inside, a request head must arrive
within ``header_timeout_s`` of its first byte (a client trickling headers is cut off with a 408);
an idle connection is closed after ``keepalive_s``. Bodies have their own timeout
(``proxy.web.bodies``). The listen backlog is ``backlog``.

``serve_until_signalled`` runs the app until SIGTERM or SIGINT, then drains: ``/readyz`` turns 503
at once and the proxy keeps serving for ``drain_s`` so load balancers notice, then it stops
listening, gives in-flight requests ``shutdown_timeout_s`` to finish, flushes spans and closes its
stores (the app's cleanup). A second signal exits at once (one arriving within ``SAME_SIGNAL_S`` of
the first is taken for the same signal delivered twice).
"""

from __future__ import annotations

import asyncio
import gc
import os
import resource
import signal
from collections.abc import Awaitable, Callable, Sequence
from http import HTTPStatus
from typing import Protocol

import structlog
from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from proxy.config import Settings
from proxy.http import ERROR_SHAPE, ErrorShape
from proxy.web.connections import (
    Connections,
    Reason,
    Verdict,
    connection_cap,
    fd_wanted,
    per_client_cap,
    refusal_room,
)
from proxy.web.errors import error_body
from proxy.web.keys import READY

log = structlog.get_logger("embedshift.server")
SAME_SIGNAL_S = 0.5
"""A second signal this soon after the first is the same one: a terminal sends Ctrl-C to the
whole process group and ``uv run`` forwards it to its child as well."""


def native_shape(status: int, message: str) -> bytes:
    return error_body(status, HTTPStatus(status).phrase.replace(" ", ""), message)


def _raw_error(status: HTTPStatus, message: str, shape: ErrorShape = native_shape) -> bytes:
    """A whole JSON error response, for a connection no request handler will answer."""
    body = shape(status, message)
    return (f"HTTP/1.1 {status.value} {status.phrase}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode() + body


class GuardedHandler(RequestHandler):
    """aiohttp's connection protocol, cutting off a request head that does not arrive in time and
    telling the door when it is idle. It reads four of the base class's private fields (request
    count, queued messages, current request, loop); tests pin the behaviour."""

    def __init__(self, server: web.Server, settings: Settings, door: Connections,
                 client: str, shape: ErrorShape = native_shape, **kwargs: object) -> None:
        super().__init__(server, **kwargs)  # type: ignore[arg-type]
        self._settings = settings
        self._shape = shape
        self._door = door
        self.client = client
        self.idle_since: float | None = None
        self._last_byte = 0.0
        self._head_timer: asyncio.TimerHandle | None = None
        self._payload: object = None  # the last request's body, until read whole

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.idle_since = self._loop.time()
        self._door.add(self)
        super().connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if not data:  # aiohttp re-feeds its buffer with b"" when it resumes reading
            super().data_received(data)
            return
        self.idle_since = None
        self._last_byte = self._loop.time()
        requests_before = self._request_count
        super().data_received(data)
        if self._request_count != requests_before:
            self._cancel_head_timer()  # a head arrived
            self._payload = self._messages[-1][1] if self._messages else None
        elif (self._head_timer is None and self._current_request is None
              and not self._messages and self._between_requests()):
            self._head_timer = self._loop.call_later(self._settings.header_timeout_s,
                                                     self._head_too_slow, self._request_count)

    @property
    def waiting_since(self) -> float | None:
        """While a request head or body is still arriving, when its last byte came."""
        arriving = self._head_timer is not None or not self._between_requests()
        return self._last_byte if arriving and self.idle_since is None else None

    def _between_requests(self) -> bool:
        """Whether the next byte starts a request head, not the rest of the last body (which
        aiohttp drains, after an early answer, before it reads another head)."""
        payload = self._payload
        return payload is None or bool(payload.is_eof())  # type: ignore[attr-defined]

    async def finish_response(self, request: web.BaseRequest, resp: web.StreamResponse,
                              start_time: float | None) -> tuple[web.StreamResponse, bool]:
        answered = await super().finish_response(request, resp, start_time)
        if not self._messages:
            self.idle_since = self._loop.time()
        return answered

    def connection_lost(self, exc: BaseException | None) -> None:
        self._cancel_head_timer()
        self._door.remove(self)
        super().connection_lost(exc)

    def shed(self) -> None:
        """Close this idle or stalled connection to make room for a new one (a stalled request
        is told why first)."""
        self._door.remove(self)
        if self.waiting_since is not None and self.transport is not None:
            self._cancel_head_timer()
            self.transport.write(_raw_error(
                HTTPStatus.REQUEST_TIMEOUT, "the request stalled while others waited for room: "
                "send it whole", self._shape))
            self.transport.close()
            return
        self.force_close()

    def _head_too_slow(self, requests_then: int) -> None:
        self._head_timer = None
        if self._request_count == requests_then and self.transport is not None:
            log.info("connection_cut", reason="header_timeout",
                     timeout_s=self._settings.header_timeout_s)
            self.transport.write(_raw_error(
                HTTPStatus.REQUEST_TIMEOUT, "the request head did not arrive within "
                f"{self._settings.header_timeout_s:g}s", self._shape))
            self.force_close()  # closes the transport once the answer is written

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def log_exception(self, *args: object, **kwargs: object) -> None:
        """aiohttp's own request errors (a request that is not HTTP, a client gone before its
        answer): one JSON line a second with how many, never a traceback per client mistake.
        Only the error's kind is logged: a parser's message can quote a header, token and all."""
        exc = kwargs.get("exc_info")
        _REQUEST_ERRORS.add(self._loop.time(), what=str(args[0]) if args else None,
                            error=type(exc).__name__ if isinstance(exc, BaseException) else None)

    def handle_error(self, request: web.BaseRequest, status: int = 500,
                     exc: BaseException | None = None, message: str | None = None
                     ) -> web.StreamResponse:
        """What aiohttp answers before any handler runs (a request that is not valid HTTP), as
        JSON like every other error. The parser's own message is not echoed: it can quote the
        offending header, token and all."""
        super().handle_error(request, status, exc, message)  # logs; refuses if already answering
        phrase = HTTPStatus(status).phrase
        what = "not valid HTTP/1.1" if status < 500 else "could not be handled"
        response = web.Response(status=status, content_type="application/json", body=self._shape(
            status, f"the request is {what} ({type(exc).__name__ if exc else phrase})"))
        response.force_close()
        return response


class Refusal(asyncio.Protocol):
    """A connection that cannot be served. It is answered with a JSON 503 once its request
    head has been read (or after ``HEAD_WAIT_S``; at once when ``patient`` is false, as under
    pressure), its sending side is then closed, and what the client still sends is read and
    dropped until the client closes or ``LINGER_S`` pass. Closing with the request unread would
    have the client read a reset instead of the answer."""

    HEAD_WAIT_S = 1.0
    LINGER_S = 2.0

    def __init__(self, answer: bytes, on_closed: Callable[[Refusal], None],
                 patient: bool = True) -> None:
        self._answer = answer
        self._on_closed = on_closed
        self._patient = patient
        self._head = b""
        self._answered = False
        self._transport: asyncio.Transport | None = None
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]
        if self._patient:
            self._timer = asyncio.get_running_loop().call_later(self.HEAD_WAIT_S,
                                                                self._answer_now)
        else:
            self._answer_now()

    def data_received(self, data: bytes) -> None:
        if not self._answered:
            self._head = (self._head + data)[-8192:]
            if b"\r\n\r\n" in self._head:
                self._answer_now()

    def eof_received(self) -> bool:
        self.close()  # the client sends no more: answer, and close once the answer is out
        return True

    def _answer_now(self) -> None:
        transport = self._transport
        if self._answered or transport is None:
            return
        self._answered = True
        if self._timer is not None:
            self._timer.cancel()
        transport.write(self._answer)
        if transport.can_write_eof():
            transport.write_eof()
        self._timer = asyncio.get_running_loop().call_later(self.LINGER_S, transport.close)

    def close(self) -> None:
        """Answer now if not yet, and close (to make room, or on stopping)."""
        self._answer_now()
        if self._transport is not None:
            self._transport.close()  # what is buffered is written first

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._transport = None
        self._on_closed(self)


class Tally:
    """An event logged at most once per ``every_s``, with how many happened since the last line:
    a flood of refusals is a line a second, not a line each."""

    def __init__(self, event: str, every_s: float = 1.0) -> None:
        self._event, self._every_s = event, every_s
        self._count, self._logged_at = 0, float("-inf")

    def add(self, now: float, **fields: object) -> None:
        self._count += 1
        if now - self._logged_at >= self._every_s:
            log.warning(self._event, count=self._count, **fields)
            self._count, self._logged_at = 0, now


_REQUEST_ERRORS = Tally("request_error")
"""What aiohttp failed to handle before or after a handler ran, counted, a line a second."""


class Door(asyncio.Protocol):
    """The first protocol of every connection: it asks ``Connections`` and hands the transport
    to a ``GuardedHandler`` (closing an idle connection first when told to) or to a
    ``Refusal``."""

    def __init__(self, site: GuardedSite) -> None:
        self._site = site

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._site.admit(transport)  # type: ignore[arg-type]


def descriptor_limit(wanted: int) -> int:
    """The process's open-file limit, raised towards ``wanted`` as far as the hard limit lets."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        raised = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        if raised > soft:
            try:
                resource.setrlimit(resource.RLIMIT_NOFILE, (raised, hard))
                soft = raised
            except (ValueError, OSError):
                pass
    return 1 << 20 if soft == resource.RLIM_INFINITY else soft


class GuardedSite(web.TCPSite):
    """A TCP site whose connections pass a ``Door``: capped by the descriptor limit, shared
    fairly between clients, idle ones shed first, the rest refused with a JSON 503."""

    def __init__(self, runner: web.AppRunner, settings: Settings,
                 shared_with: GuardedSite | None = None) -> None:
        """``shared_with``: another site of this process (the Qdrant API beside the native
        one) whose cap, descriptor budget and refusals this one shares."""
        super().__init__(runner, settings.host, settings.port, backlog=settings.backlog)
        self._settings = settings
        app = getattr(runner, "app", None)
        self._shape = app.get(ERROR_SHAPE, native_shape) if app is not None else native_shape
        self._refused = Tally("connection_refused")
        self._shed = Tally("connection_shed")
        self.connections: Connections
        self._refusing: dict[Refusal, None]  # oldest first
        self._fd_limit: int
        if shared_with is not None:
            self.connections = shared_with.connections
            self._refusing = shared_with._refusing
            self._fd_limit = shared_with._fd_limit
            return
        fd_limit = descriptor_limit(fd_wanted(settings.max_connections))
        cap = connection_cap(settings.max_connections, fd_limit)
        self.connections = Connections(
            cap, per_client_cap(cap, settings.max_connections_per_client))
        self._refusing = {}
        self._fd_limit = fd_limit
        log.info("connections", cap=cap, per_client=self.connections.per_client,
                 max_connections=settings.max_connections, fd_limit=fd_limit,
                 reason=None if cap == settings.max_connections else "fd_limit")

    def admit(self, transport: asyncio.Transport) -> None:
        peer = transport.get_extra_info("peername")
        client = str(peer[0]) if isinstance(peer, tuple) and peer else "local"
        loop = asyncio.get_running_loop()
        admission = self.connections.admit(client, loop.time())
        reason = admission.reason.value if admission.reason else None
        if admission.verdict is Verdict.REFUSE:
            self._refuse(transport, reason, loop.time())
            return
        if admission.shed is not None:  # an HTTP connection of either site, or a gRPC one
            self._shed.add(loop.time(), reason=reason)
            admission.shed.shed()
        server = self._runner.server
        assert server is not None, "runner.setup() first"
        handler = GuardedHandler(server, self._settings, self.connections, client, self._shape,
                                 loop=loop, **server._kwargs)
        transport.set_protocol(handler)
        handler.connection_made(transport)

    def _refuse(self, transport: asyncio.Transport, reason: str | None, now: float) -> None:
        limit = (self.connections.cap if reason == Reason.MAX_CONNECTIONS.value
                 else self.connections.per_client)
        self._refused.add(now, reason=reason, limit=limit)
        room = refusal_room(self._fd_limit, len(self.connections))
        while len(self._refusing) >= room:  # the longest-refused makes room, its answer sent
            oldest = next(iter(self._refusing))
            self._refusing.pop(oldest)
            oldest.close()
        which = "open connections" if reason == Reason.MAX_CONNECTIONS.value \
            else "connections from your address"
        refusal = Refusal(_raw_error(HTTPStatus.SERVICE_UNAVAILABLE, f"too many {which}: the "
                                     f"limit is {limit} and all are busy; retry shortly",
                                     self._shape),
                          self._refusal_closed, patient=len(self._refusing) < room // 2)
        self._refusing[refusal] = None
        transport.set_protocol(refusal)
        refusal.connection_made(transport)

    def _refusal_closed(self, refusal: Refusal) -> None:
        self._refusing.pop(refusal, None)

    async def stop(self) -> None:
        for refusal in list(self._refusing):
            refusal.close()
        await super().stop()

    async def start(self) -> None:
        self._runner._reg_site(self)  # what BaseSite.start does
        assert self._runner.server is not None, "runner.setup() first"
        self._server = await asyncio.get_running_loop().create_server(
            lambda: Door(self), self._host, self._port, backlog=self._backlog,
            reuse_address=self._reuse_address, reuse_port=self._reuse_port)
        sockets = self._server.sockets
        self._bound_port = sockets[0].getsockname()[1] if sockets else self._port


def settle_heap() -> None:
    """What start-up loaded (libraries, models, rules) is kept out of the collector's full
    passes from then on: a full pass over it held the event loop 20-220 ms at a time under load
    (every request waited), where the objects requests make are all it need look at."""
    gc.collect()
    gc.freeze()


def make_runner(app: web.Application, settings: Settings) -> web.AppRunner:
    return web.AppRunner(app, access_log=None, keepalive_timeout=settings.keepalive_s,
                         shutdown_timeout=settings.shutdown_timeout_s, handle_signals=False)


class Edge(Protocol):
    """A server of another protocol beside the apps (Qdrant's gRPC API): started once the
    native site listens, its connections in the same budget; stopped first, in-flight calls
    given ``grace_s`` to finish."""

    async def start(self, connections: Connections) -> None: ...

    async def stop(self, grace_s: float) -> None: ...


async def serve_until_signalled(app: web.Application, settings: Settings,
                                on_listening: Callable[[str], None] | None = None,
                                after_cleanup: Callable[[], Awaitable[None]] | None = None,
                                also: Sequence[tuple[web.Application, Settings]] = (),
                                *, edges: Sequence[Edge] = ()) -> None:
    """Serve ``app`` until SIGTERM or SIGINT, then drain and stop (see the module); ``also``:
    more apps on their own host and port (the Qdrant API), stopped first; ``edges``: other
    protocols' servers, stopped before them."""
    runner = make_runner(app, settings)
    await runner.setup()
    others = [(make_runner(other, where), where) for other, where in also]
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
        app[READY].draining = True
        stopping.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)
    try:
        site = GuardedSite(runner, settings)
        await site.start()
        for other, where in others:
            await other.setup()
            other_site = GuardedSite(other, where, shared_with=site)  # one budget
            await other_site.start()
            log.info("listening", url=f"http://{where.host}:{other_site.port}", api="qdrant")
        for edge in edges:
            await edge.start(site.connections)
        settle_heap()  # started: every app's start-up has run
        if on_listening is not None:
            on_listening(f"http://{settings.host}:{site.port}")
        await stopping.wait()
        await asyncio.sleep(settings.drain_s)  # still serving: load balancers see 503 first
    finally:
        stopping.set()  # from here on, a signal exits at once
        for edge in edges:
            await edge.stop(settings.shutdown_timeout_s)
        for other, _ in others:
            await other.cleanup()
        await runner.cleanup()  # stop listening, finish in-flight, then the app's cleanup
        if after_cleanup is not None:
            await after_cleanup()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
        log.info("stopped")
