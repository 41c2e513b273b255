"""Over a real port: one access line per call with the request's counts, and a trace that
continues the caller's `traceparent` with spans down to each batch."""

from __future__ import annotations

import logging

import pytest

from lychee_grpc.client import make_request

TRACE_ID = "0af7651916cd43dd8448eb211c80319c"


async def test_each_call_logs_one_access_line_with_its_counts_and_request_id(server, client, caplog):
    caplog.set_level(logging.INFO, logger="lychee_grpc.access")
    await client.stub.Rerank(make_request("denim", ["blue jeans", "green tea"]), timeout=30,
                             metadata=(("x-request-id", "access-1"),))
    lines = [r for r in caplog.records if r.name == "lychee_grpc.access"]
    assert len(lines) == 1
    line = lines[0]
    assert (line.method, line.code, line.documents, line.request_id) == ("Rerank", "OK", 2, "access-1")
    assert line.tokens > 0 and line.images == 0 and line.peer and line.ms > 0


async def test_traceparent_in_metadata_is_continued_by_the_calls_spans(server, client):
    pytest.importorskip("opentelemetry.sdk", reason="the [otel] extra is not installed")
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from lychee_grpc.observability.tracing import TracingObserver

    exporter = InMemorySpanExporter()
    tracer = TracingObserver(SimpleSpanProcessor(exporter))
    server.interceptor.observers.append(tracer)
    try:
        await client.stub.Rerank(make_request("denim", ["blue jeans", "green tea", "sofa"]), timeout=30,
                                 metadata=(("traceparent", f"00-{TRACE_ID}-b7ad6b7169203331-01"),))
    finally:
        server.interceptor.observers.remove(tracer)
    spans = exporter.get_finished_spans()
    names = sorted(s.name for s in spans)
    assert "lychee.v1/Rerank" in names and "preprocess" in names and "queue" in names and "batch" in names
    assert all(f"{s.context.trace_id:032x}" == TRACE_ID for s in spans)
