"""Qdrant's gRPC API (``qdrant.Points``, ``qdrant.Collections``, ``qdrant.Qdrant``) over the
REST edge's handlers: each call is translated into the ``Call`` the REST edge hands them
(``proxy.qdrant_grpc.translate``), so routing, Documents, provenance, adoption, hybrid
queries, refusals and keys are decided in one place, and only the wire differs.

Keys and the affinity header come from the call's metadata; errors answer with the status
codes Qdrant uses and its kind of message, never a traceback; the version that served a call
goes in the trailing metadata (``x-embedshift-model-version``), its trace ids beside it. The
services are read from qdrant-client's own protos, on a ``grpc.aio`` server.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
import msgspec
import structlog
from google.protobuf.message import DecodeError, Message
from google.protobuf.message_factory import GetMessageClass
from multidict import CIMultiDict
from qdrant_client import grpc as pb
from qdrant_client.grpc import collections_service_pb2, points_service_pb2, qdrant_pb2

from proxy.qdrant_api import handlers
from proxy.qdrant_api.handlers import (
    MAX_BODY_BYTES,
    TRACE_HEADER,
    VERSION_HEADER,
    Call,
    Parts,
    Reply,
    check_access,
    given_key,
    refusal_of,
    too_large,
)
from proxy.qdrant_api.shapes import QDRANT_VERSION, check_name
from proxy.qdrant_grpc import translate as t
from proxy.web.connections import Connections, Verdict
from rollout_rules.errors import EmbedshiftError, RateLimited, RuleError

log = structlog.get_logger("embedshift.qdrant_grpc")
_ENCODER = msgspec.json.Encoder()
VERSION_KEY = VERSION_HEADER.lower()  # gRPC metadata keys are lower case
MAX_SEND_BYTES = 256 * 1024 * 1024  # what an answer may hold is bounded by max_answer_bytes

CODES = {400: grpc.StatusCode.INVALID_ARGUMENT, 401: grpc.StatusCode.UNAUTHENTICATED,
         403: grpc.StatusCode.PERMISSION_DENIED, 404: grpc.StatusCode.NOT_FOUND,
         409: grpc.StatusCode.FAILED_PRECONDITION, 413: grpc.StatusCode.INVALID_ARGUMENT,
         429: grpc.StatusCode.RESOURCE_EXHAUSTED, 503: grpc.StatusCode.UNAVAILABLE,
         504: grpc.StatusCode.DEADLINE_EXCEEDED}
"""The gRPC status for each HTTP status the REST edge would answer (else INTERNAL)."""


@dataclass(frozen=True)
class Rpc:
    """One method: the REST handler it goes to, how its request reads as REST's body and its
    answer as the gRPC response, whether it writes, and the path's last name if any."""

    answers: Callable[[Call], Awaitable[Reply]]
    body: t.Body
    answer: t.Answer
    writing: bool = False
    key: Callable[[Any], str] | None = None


POINTS = {
    "Query": Rpc(handlers.query, t.query, t.query_answer),
    "QueryBatch": Rpc(handlers.query_batch, t.query_batch, t.query_batch_answer),
    "QueryGroups": Rpc(handlers.query_groups, t.query_groups, t.groups_answer),
    "Search": Rpc(handlers.search, t.search, t.search_answer),
    "SearchBatch": Rpc(handlers.search_batch, t.search_batch, t.search_batch_answer),
    "Recommend": Rpc(handlers.recommend, t.recommend, t.recommend_answer),
    "Get": Rpc(handlers.retrieve, t.get, t.get_answer),
    "Scroll": Rpc(handlers.scroll, t.scroll, t.scroll_answer),
    "Count": Rpc(handlers.count, t.count, t.count_answer),
    "Upsert": Rpc(handlers.upsert, t.upsert, t.done_answer, writing=True),
    "Delete": Rpc(handlers.delete_points, t.delete, t.done_answer, writing=True),
    "SetPayload": Rpc(handlers.set_payload, t.set_payload, t.done_answer, writing=True),
    "OverwritePayload": Rpc(handlers.overwrite_payload, t.set_payload, t.done_answer,
                            writing=True),
    "DeletePayload": Rpc(handlers.delete_payload, t.delete_payload, t.done_answer,
                         writing=True),
    "ClearPayload": Rpc(handlers.clear_payload, t.clear_payload, t.done_answer, writing=True),
    "CreateFieldIndex": Rpc(handlers.create_index, t.create_index, t.done_answer,
                            writing=True),
    "DeleteFieldIndex": Rpc(handlers.delete_index, t.nothing, t.done_answer, writing=True,
                            key=lambda message: message.field_name),
}
COLLECTIONS = {
    "List": Rpc(handlers.list_collections, t.nothing, t.collections_answer),
    "Get": Rpc(handlers.get_collection, t.nothing, t.collection_answer),
    "CollectionExists": Rpc(handlers.collection_exists, t.nothing, t.exists_answer),
    "Create": Rpc(handlers.create_collection, t.create_collection, t.changed_answer,
                  writing=True),
    "Delete": Rpc(handlers.delete_collection, t.nothing, t.changed_answer, writing=True),
    "ListAliases": Rpc(handlers.list_aliases, t.nothing, t.aliases_answer),
    "ListCollectionAliases": Rpc(handlers.collection_aliases, t.nothing, t.aliases_answer),
}


class Refused(Exception):
    """A call answered with ``code`` and ``message`` (and ``trailing`` metadata)."""

    def __init__(self, code: grpc.StatusCode, message: str,
                 trailing: Sequence[tuple[str, str]] = ()) -> None:
        super().__init__(message)
        self.code, self.message, self.trailing = code, message, tuple(trailing)


def refusal(exc: BaseException) -> Refused:
    """How the REST edge's refusal of ``exc`` reads over gRPC; anything unforeseen is an
    INTERNAL "internal error" (logged, never shown)."""
    if isinstance(exc, EmbedshiftError):
        status, message = refusal_of(exc)
        trailing = [("retry-after", str(max(1, math.ceil(exc.retry_after_s))))] \
            if isinstance(exc, RateLimited) else []
        return Refused(CODES.get(status, grpc.StatusCode.INTERNAL), message, trailing)
    log.error("qdrant_grpc_error", error=type(exc).__name__, exc_info=exc)
    return Refused(grpc.StatusCode.INTERNAL, "internal error")


def _metadata(context: grpc.aio.ServicerContext) -> CIMultiDict[str]:
    return CIMultiDict((key, value) for key, value in context.invocation_metadata() or ()
                       if isinstance(value, str))


@dataclass(eq=False)
class _Peer:
    """A client connection as the connection budget sees it (``proxy.web.connections``): known
    by its address and port, idle between calls. Shed, it is forgotten at once; grpc closes
    its socket at the idle timeout (a servicer cannot)."""

    client: str
    name: str
    door: Door = field(repr=False)
    calls: int = 0
    idle_since: float | None = None
    waiting_since: float | None = None

    def shed(self) -> None:
        self.door.forget(self.name)


@dataclass
class Door:
    """gRPC connections counted in the REST edges' budget: a connection is known from its first
    call until it has been idle ``idle_s`` (when the server closes it, ``grpc.max_connection_
    idle_ms``); a new one over the cap sheds the longest-idle, else is refused."""

    connections: Connections | None
    idle_s: float
    clock: Callable[[], float] = time.monotonic  # the HTTP sites': their event loop's
    peers: dict[str, _Peer] = field(default_factory=dict)

    def enter(self, peer: str) -> _Peer | None:
        if self.connections is None:
            return None
        held = self.peers.get(peer)
        if held is None:  # a new connection: those closed by now (idle past idle_s) forgotten
            now = self.clock()
            for name, known in list(self.peers.items()):
                if known.idle_since is not None and now - known.idle_since >= self.idle_s:
                    self.forget(name)
            held = _Peer(client=peer.rsplit(":", 1)[0], name=peer, door=self)
            admission = self.connections.admit(held.client, now)
            if admission.verdict is Verdict.REFUSE:
                reason = admission.reason.value if admission.reason else "max_connections"
                raise Refused(grpc.StatusCode.UNAVAILABLE,
                              f"too many connections ({reason}): try again later")
            if admission.shed is not None:  # a gRPC connection, or an HTTP one it closes
                admission.shed.shed()
            self.connections.add(held)
            self.peers[peer] = held
        held.calls += 1
        held.idle_since = None
        return held

    def leave(self, held: _Peer | None) -> None:
        if held is not None:
            held.calls -= 1
            if held.calls == 0:
                held.idle_since = self.clock()

    def forget(self, name: str) -> None:
        held = self.peers.pop(name, None)
        if held is not None and self.connections is not None:
            self.connections.remove(held)


class Edge:
    """The servicers' shared work: one method of each RPC table, as a ``grpc.aio`` handler."""

    def __init__(self, parts: Parts, door: Door) -> None:
        self.parts, self.door = parts, door

    def method(self, rpc: Rpc) -> Callable[[Any, grpc.aio.ServicerContext],
                                           Awaitable[Message]]:
        async def handle(message: Any, context: grpc.aio.ServicerContext) -> Message:
            try:
                held = self.door.enter(context.peer())
            except Refused as refused:
                await context.abort(refused.code, refused.message)
            try:
                response, trailing = await self._answered(rpc, message, context)
            except Refused as refused:
                trailing = refused.trailing
                context.set_trailing_metadata(trailing)
                await context.abort(refused.code, refused.message)
            finally:
                self.door.leave(held)
            context.set_trailing_metadata(trailing)
            return response

        return handle

    async def _answered(self, rpc: Rpc, message: Any, context: grpc.aio.ServicerContext
                        ) -> tuple[Message, tuple[tuple[str, str], ...]]:
        started = time.perf_counter()
        try:
            metadata = _metadata(context)
            check_access(self.parts.settings, given_key(metadata), writing=rpc.writing)
            name = getattr(message, "collection_name", "")
            if message.DESCRIPTOR.fields_by_name.get("collection_name") is not None:
                check_name(name)
            body = _read(rpc, message)
            call = Call(self.parts, name, metadata, body,
                        rpc.key(message) if rpc.key is not None else "")
            reply = await rpc.answers(call)
            response = rpc.answer(reply.result, time.perf_counter() - started)
            refused = too_large(response.ByteSize(), reply.max_bytes)
            if refused is not None:
                raise refused
        except Refused:
            raise
        except Exception as exc:  # noqa: BLE001 -- every failure answered, none shown
            raise refusal(exc) from None
        trailing = []
        if reply.version is not None:
            trailing.append((VERSION_KEY, reply.version))
        if call.traces:
            trailing.append((TRACE_HEADER, ",".join(call.traces)))
        return response, tuple(trailing)


def _read(rpc: Rpc, message: Message) -> bytes:
    """The call's REST body; what the client's converters cannot read is a 400 naming the
    message, as REST names a body it cannot read."""
    try:
        body = rpc.body(message)
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise RuleError(message.DESCRIPTOR.name, f"cannot be read: {type(exc).__name__}"
                        ) from None
    return _ENCODER.encode(body) if body else b""


Method = Callable[[Any, grpc.aio.ServicerContext], Awaitable[Message]]


@dataclass(frozen=True)
class Unreadable:
    """A request whose bytes are not its message: answered INVALID_ARGUMENT, not grpc's own
    INTERNAL "Exception deserializing request"."""

    kind: str


def _reader(kind: type[Message]) -> Callable[[bytes], Any]:
    def read(data: bytes) -> Any:
        try:
            return kind.FromString(data)
        except DecodeError:
            return Unreadable(kind.__name__)

    return read


def _service(descriptor: Any, methods: dict[str, Method]) -> grpc.GenericRpcHandler:
    """The service ``descriptor`` names (qdrant-client's own protos) with ``methods``; every
    other method of it answers UNIMPLEMENTED in Qdrant's words."""
    handlers = {}
    for method in descriptor.methods:
        given = methods.get(method.name) or _unimplemented(
            f"{descriptor.name}/{method.name}")
        handlers[method.name] = grpc.unary_unary_rpc_method_handler(
            _readable(given),
            request_deserializer=_reader(GetMessageClass(method.input_type)),
            response_serializer=GetMessageClass(method.output_type).SerializeToString)
    return grpc.method_handlers_generic_handler(descriptor.full_name, handlers)


def _readable(method: Method) -> Method:
    async def handle(message: Any, context: grpc.aio.ServicerContext) -> Message:
        if isinstance(message, Unreadable):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                f"the request is not a valid {message.kind} message")
        return await method(message, context)

    return handle


def _unimplemented(name: str) -> Method:
    async def handle(message: Any, context: grpc.aio.ServicerContext) -> Message:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED,
                            f"{name} is not served by embedshift's Qdrant API "
                            "(see the docs: what is supported)")
        raise AssertionError("unreachable")  # abort raises

    return handle


async def health_check(message: pb.HealthCheckRequest, context: grpc.aio.ServicerContext
                       ) -> pb.HealthCheckReply:
    """Open whatever the key, as in Qdrant: it tells only that it runs, and which version."""
    return pb.HealthCheckReply(title="qdrant - vector search engine (embedshift)",
                               version=QDRANT_VERSION)


def make_grpc_server(parts: Parts, connections: Connections | None = None, *,
                     idle_s: float = 60.0) -> grpc.aio.Server:
    """A ``grpc.aio`` server with Qdrant's services (a port is the caller's to add), made in
    the running event loop: messages up to the REST edge's body limit, connections in
    ``connections``'s budget, timed by that loop's clock as the HTTP sites time theirs."""
    server = grpc.aio.server(options=[
        ("grpc.max_receive_message_length", MAX_BODY_BYTES),
        ("grpc.max_send_message_length", MAX_SEND_BYTES),
        ("grpc.max_connection_idle_ms", int(idle_s * 1000)),
        ("grpc.so_reuseport", 0)])
    edge = Edge(parts, Door(connections, idle_s, asyncio.get_running_loop().time))
    server.add_generic_rpc_handlers([
        _service(points_service_pb2.DESCRIPTOR.services_by_name["Points"],
                 {name: edge.method(rpc) for name, rpc in POINTS.items()}),
        _service(collections_service_pb2.DESCRIPTOR.services_by_name["Collections"],
                 {name: edge.method(rpc) for name, rpc in COLLECTIONS.items()}),
        _service(qdrant_pb2.DESCRIPTOR.services_by_name["Qdrant"],
                 {"HealthCheck": health_check})])
    return server


class GrpcEdge:
    """The gRPC API as ``serve`` runs it (``proxy.web.server.Edge``): on ``host:port``, its
    connections in the REST edges' budget; stopping refuses new calls and lets in-flight ones
    finish."""

    def __init__(self, parts: Parts, host: str, port: int) -> None:
        self.parts, self.host, self.port = parts, host, port
        self.server: grpc.aio.Server | None = None

    async def start(self, connections: Connections | None) -> None:
        self.server = make_grpc_server(self.parts, connections,
                                       idle_s=self.parts.settings.keepalive_s)
        self.port = self.server.add_insecure_port(f"{self.host}:{self.port}")
        await self.server.start()
        log.info("listening", url=f"grpc://{self.host}:{self.port}", api="qdrant-grpc")

    async def stop(self, grace_s: float) -> None:
        if self.server is not None:
            await self.server.stop(grace_s)
            self.server = None
