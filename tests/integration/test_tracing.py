"""Optional OpenTelemetry spans: parented by the client's traceparent, off by default."""

from __future__ import annotations

from pathlib import Path

import aiohttp
import pytest

from tests.support.gateway import base_config, running_gateway

sdk = pytest.importorskip("opentelemetry.sdk.trace")
from opentelemetry import trace  # noqa: E402
from opentelemetry.sdk.trace.export import SimpleSpanProcessor  # noqa: E402
from opentelemetry.sdk.trace.export.in_memory_span_exporter import (  # noqa: E402
    InMemorySpanExporter,
)

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "00f067aa0ba902b7"

_exporter = InMemorySpanExporter()
_provider = sdk.TracerProvider()
_provider.add_span_processor(SimpleSpanProcessor(_exporter))
trace.set_tracer_provider(_provider)


@pytest.mark.parametrize("enabled", [True, False])
async def test_request_span_continues_the_callers_trace(tmp_path: Path, upstream, enabled: bool):
    _exporter.clear()
    config = base_config(upstream.url, tracing={"enabled": enabled})
    traceparent = f"00-{TRACE_ID}-{PARENT}-01"
    async with running_gateway(tmp_path, config) as gw, aiohttp.ClientSession() as s:
        async with s.get(
            f"http://127.0.0.1:{gw.proxy_port}/x", headers={"traceparent": traceparent}
        ) as r:
            assert r.status == 200
    assert upstream.last.header("traceparent") == traceparent  # relayed untouched either way
    spans = _exporter.get_finished_spans()
    if not enabled:
        assert spans == ()
        return
    (span,) = spans
    assert f"{span.context.trace_id:032x}" == TRACE_ID
    assert f"{span.parent.span_id:016x}" == PARENT
    assert span.attributes["http.response.status_code"] == 200
    assert span.attributes["gateway.decision"] == "anonymous"
