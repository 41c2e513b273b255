"""Traces with the SDK's in-memory exporter: the call's span continues the caller's trace and
holds preprocess, queue and one span per batch, at the times the engine measured."""

from __future__ import annotations

import time

import pytest

pytest.importorskip("opentelemetry.sdk", reason="the [otel] extra is not installed")

from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from lychee_grpc.engine.types import RequestStats, Timings, Usage
from lychee_grpc.observability.requests import RequestRecord
from lychee_grpc.observability.tracing import TracingObserver

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "00f067aa0ba902b7"


def test_spans_request_preprocess_queue_and_batches_under_the_callers_trace():
    exporter = InMemorySpanExporter()
    observer = TracingObserver(SimpleSpanProcessor(exporter))
    now = time.perf_counter()
    stats = RequestStats(Usage(prompt_tokens=120, images=1), Timings(preprocess_ms=5.0, queue_ms=3.0),
                         batches=[(now - 0.030, now - 0.020), (now - 0.015, now - 0.005)])
    record = RequestRecord(traceparent=f"00-{TRACE_ID}-{PARENT}-01", documents=4, tokens=120, images=1, stats=stats)
    observer.request_done("grpc", "Rerank", "OK", 0.05, "rid-7", "peer", record)
    spans = {s.name: s for s in exporter.get_finished_spans()}
    batches = [s for s in exporter.get_finished_spans() if s.name == "batch"]
    assert set(spans) == {"lychee.v1/Rerank", "preprocess", "queue", "batch"} and len(batches) == 2
    root = spans["lychee.v1/Rerank"]
    assert f"{root.context.trace_id:032x}" == TRACE_ID
    assert f"{root.parent.span_id:016x}" == PARENT
    assert root.attributes["lychee.request_id"] == "rid-7" and root.attributes["lychee.documents"] == 4
    for child in [spans["preprocess"], spans["queue"], *batches]:
        assert child.parent.span_id == root.context.span_id
        assert root.start_time <= child.start_time <= child.end_time <= root.end_time + 1_000_000
    assert (spans["preprocess"].end_time - spans["preprocess"].start_time) == pytest.approx(5e6, abs=1e3)
    durations = sorted(b.end_time - b.start_time for b in batches)
    assert durations == pytest.approx([10e6, 10e6], rel=0.01)


def test_without_a_traceparent_a_new_trace_starts_and_errors_mark_the_span():
    exporter = InMemorySpanExporter()
    observer = TracingObserver(SimpleSpanProcessor(exporter))
    observer.request_done("grpc", "Rerank", "INVALID_ARGUMENT", 0.001, "rid-8", "peer", RequestRecord())
    (span,) = exporter.get_finished_spans()
    assert span.parent is None
    assert not span.status.is_ok
