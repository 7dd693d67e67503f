"""Spans reach a real OTLP/HTTP receiver, configured only by the OTEL_* variables passed in."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from proxy.telemetry import tracer_provider
from rollout_rules.errors import RuleError
from tests.integration.conftest import ProxyFactory

pytestmark = pytest.mark.integration


@pytest.fixture
async def receiver() -> AsyncIterator[tuple[str, list[ExportTraceServiceRequest]]]:
    received: list[ExportTraceServiceRequest] = []

    async def traces(request: web.Request) -> web.Response:
        assert request.content_type == "application/x-protobuf"
        if request.headers.get("x-tenant") != "acme":  # OTEL_EXPORTER_OTLP_TRACES_HEADERS
            return web.Response(status=401)
        export = ExportTraceServiceRequest()
        export.ParseFromString(await request.read())
        received.append(export)
        return web.Response(body=ExportTraceServiceResponse().SerializeToString(),
                            content_type="application/x-protobuf")

    app = web.Application()
    app.router.add_post("/v1/traces", traces)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    yield f"http://127.0.0.1:{server.port}", received
    await server.close()


def _attributes(span: Any) -> dict[str, Any]:
    return {a.key: a.value.string_value or a.value.int_value or a.value.bool_value
            for a in span.attributes}


async def test_spans_reach_an_otlp_http_receiver(proxies: ProxyFactory, receiver: Any) -> None:
    endpoint, received = receiver
    await proxies.declare(percent=100)
    proxy = await proxies.start(environ={
        "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint, "OTEL_SERVICE_NAME": "embedshift-test",
        "OTEL_EXPORTER_OTLP_TRACES_HEADERS": "x-tenant=acme",
        "OTEL_RESOURCE_ATTRIBUTES": "deployment.environment=ci"})
    answer = await proxy.search(user_id="otlp")
    await proxies.close()  # app shutdown flushes the batch exporter
    spans = [span for export in received for rs in export.resource_spans
             for ss in rs.scope_spans for span in ss.spans]
    server = next(s for s in spans if s.name == "POST /v1/aliases/{alias}/search")
    assert _attributes(server)["feature_flag.result.variant"] == answer["model_version"] == "v2"
    assert server.trace_id.hex() == answer["trace_id"]
    service = {a.key: a.value.string_value for export in received
               for rs in export.resource_spans for a in rs.resource.attributes}
    assert service["service.name"] == "embedshift-test"
    assert service["deployment.environment"] == "ci"


def test_only_the_mapping_configures_the_sdk(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_SERVICE_NAME", "from-the-process")
    provider = tracer_provider({"OTEL_TRACES_SAMPLER": "always_off"})
    assert provider.resource.attributes["service.name"] == "embedshift"
    assert provider.sampler.get_description() == "AlwaysOffSampler"
    assert os.environ["OTEL_SERVICE_NAME"] == "from-the-process"  # restored
    with pytest.raises(RuleError, match="OTEL_TRACES_SAMPLER"):
        tracer_provider({"OTEL_TRACES_SAMPLER": "sometimes"})
    with pytest.raises(RuleError, match="OTEL_TRACES_SAMPLER_ARG"):
        tracer_provider({"OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "2"})


def test_spans_are_recorded_only_when_something_receives_them() -> None:
    unread = tracer_provider({"OTEL_TRACES_SAMPLER": "always_on"})
    assert unread.sampler.get_description() == "AlwaysOffSampler"
    span = unread.get_tracer("t").start_span("query")
    assert not span.is_recording()
    assert span.get_span_context().trace_id != 0  # answers and log lines still carry one
    exported = tracer_provider({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9"})
    assert exported.sampler.get_description().startswith("ParentBased{root:AlwaysOnSampler")
    assert exported.get_tracer("t").start_span("query").is_recording()
    exported.shutdown()
