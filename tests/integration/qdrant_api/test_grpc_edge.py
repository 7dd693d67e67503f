"""The gRPC edge's limits, as the REST edge's: its message size, no traceback, a graceful stop.

A real proxy and its gRPC port (`grpc.aio`, qdrant-client's generated stubs); the store's
searches are slowed or broken on demand.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from qdrant_client import grpc as pb
from qdrant_client.grpc import points_service_pb2_grpc

from proxy.qdrant_api.handlers import MAX_BODY_BYTES
from proxy.qdrant_grpc.server import GrpcEdge
from tests.eventually import eventually
from tests.integration.conftest import Proxy, ProxyFactory
from tests.integration.qdrant_api.clients import qdrant_grpc

pytestmark = pytest.mark.integration


@pytest.fixture
async def served(proxies: ProxyFactory) -> AsyncIterator[tuple[Proxy, GrpcEdge]]:
    await proxies.declare(percent=50)
    proxy = await proxies.start()
    edge = await qdrant_grpc(proxy)
    yield proxy, edge
    await edge.stop(0)


def _query(user: str) -> tuple[pb.QueryPoints, Any]:
    return pb.QueryPoints(collection_name="products", limit=3, query=pb.Query(
        nearest=pb.VectorInput(document=pb.Document(text="warm jacket", model="any")))), [
        ("x-qdrant-route-affinity", user)]


async def test_a_stop_lets_calls_in_flight_finish_and_refuses_new_ones(
        served: tuple[Proxy, GrpcEdge]) -> None:
    proxy, edge = served
    for version in ("products_v1", "products_v2"):
        proxy.store.slow[version] = 1.0
    async with grpc.aio.insecure_channel(f"127.0.0.1:{edge.port}") as channel:
        points = points_service_pb2_grpc.PointsStub(channel)  # type: ignore[no-untyped-call]
        message, metadata = _query("drained")
        before = proxy.store.searches
        in_flight = asyncio.ensure_future(points.Query(message, metadata=metadata))
        await eventually(lambda: proxy.store.searches > before)
        stopping = asyncio.ensure_future(edge.stop(10))
        answer = await in_flight  # answered whole, though the stop began under it
        assert len(answer.result) == 3
        await stopping
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await points.Query(message, metadata=metadata, timeout=5)
        assert refused.value.code() in (grpc.StatusCode.UNAVAILABLE,
                                        grpc.StatusCode.DEADLINE_EXCEEDED)


async def test_a_bug_is_an_internal_error_and_a_message_past_the_limit_is_refused(
        served: tuple[Proxy, GrpcEdge]) -> None:
    proxy, edge = served
    async with grpc.aio.insecure_channel(
            f"127.0.0.1:{edge.port}",
            options=[("grpc.max_send_message_length", 2 * MAX_BODY_BYTES)]) as channel:
        points = points_service_pb2_grpc.PointsStub(channel)  # type: ignore[no-untyped-call]
        proxy.store.exploding |= {"products_v1", "products_v2"}
        message, metadata = _query("anyone")
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await points.Query(message, metadata=metadata)
        assert refused.value.code() == grpc.StatusCode.INTERNAL
        assert refused.value.details() == "internal error"  # never the bug's own words
        proxy.store.exploding.clear()
        huge = pb.UpsertPoints(collection_name="products", points=[pb.PointStruct(
            id=pb.PointId(num=1), payload={"text": pb.Value(
                string_value="x" * (MAX_BODY_BYTES + 1))})])
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await points.Upsert(huge)
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert len((await points.Query(message, metadata=metadata)).result) == 3  # still up


async def test_bytes_that_are_not_the_message_are_an_invalid_argument(
        served: tuple[Proxy, GrpcEdge]) -> None:
    _, edge = served
    async with grpc.aio.insecure_channel(f"127.0.0.1:{edge.port}") as channel:
        query = channel.unary_unary("/qdrant.Points/Query")
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await query(b"\xff\xff\xff\xff not a message")
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert refused.value.details() == "the request is not a valid QueryPoints message"
        discover = channel.unary_unary("/qdrant.Points/Discover")
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await discover(b"")
        assert refused.value.code() == grpc.StatusCode.UNIMPLEMENTED
