"""OpenTelemetry traces (the optional `[otel]` extra): one span per call, child spans for its
preprocessing, its wait in the queue and each model batch that held its documents.

The spans are made when the call ends, from the times the engine recorded for the request
(RequestStats), with explicit start and end times: the engine never imports OpenTelemetry, and a
call costs nothing extra while it runs. The caller's `traceparent` (gRPC metadata or HTTP
header) makes the call's span a child of the caller's.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from .requests import RequestRecord

log = logging.getLogger(__name__)

try:
    from opentelemetry import trace
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
    from opentelemetry.trace import SpanKind, Status, StatusCode
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    AVAILABLE = True
except ImportError:  # the extra is not installed: tracing stays off
    AVAILABLE = False


def _ns(perf: float, offset_ns: int) -> int:
    return int(perf * 1e9) + offset_ns


class TracingObserver:
    """A RequestObserver that records each call as spans on its own TracerProvider."""

    def __init__(self, processor: SpanProcessor, service_name: str = "lychee-grpc"):
        self.provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
        self.provider.add_span_processor(processor)
        self.tracer = self.provider.get_tracer("lychee_grpc")
        self._propagator = TraceContextTextMapPropagator()

    def request_done(self, transport: str, method: str, code: str, seconds: float, request_id: str, peer: str,
                     record: RequestRecord | None = None) -> None:
        # perf_counter times (the engine's clock) -> epoch nanoseconds.
        offset_ns = time.time_ns() - time.perf_counter_ns()
        end_ns = time.time_ns()
        start_ns = end_ns - int(seconds * 1e9)
        carrier = {}
        if record is not None and record.traceparent:
            carrier = {"traceparent": record.traceparent, "tracestate": record.tracestate}
        parent = self._propagator.extract(carrier)
        span = self.tracer.start_span(
            f"lychee.v1/{method}", context=parent, kind=SpanKind.SERVER, start_time=start_ns,
            attributes={
                "rpc.system": transport,
                "rpc.method": method,
                "rpc.status": code,
                "lychee.request_id": request_id,
                "net.peer": peer,
                "lychee.documents": record.documents if record else 0,
                "lychee.tokens": record.tokens if record else 0,
                "lychee.images": record.images if record else 0,
                "lychee.truncated_documents": record.truncated if record else 0,
            },
        )
        if code != "OK":
            span.set_status(Status(StatusCode.ERROR, code))
        stats = record.stats if record is not None else None
        if stats is not None:
            within = trace.set_span_in_context(span)
            timings = stats.timings
            preprocess_end = start_ns + int(timings.preprocess_ms * 1e6)
            self._child("preprocess", within, start_ns, preprocess_end)
            if stats.batches:
                self._child("queue", within, preprocess_end, _ns(stats.batches[0][0], offset_ns),
                            {"lychee.queue_ms_max": timings.queue_ms})
                for k, (begin, finish) in enumerate(stats.batches):
                    self._child("batch", within, _ns(begin, offset_ns), _ns(finish, offset_ns), {"lychee.batch": k})
        span.end(end_time=end_ns)

    # `parent` is an OpenTelemetry Context, from the optional [otel] extra (Any: no import without it).
    def _child(self, name: str, parent: Any, start_ns: int, end_ns: int,
               attributes: dict[str, str | int | float] | None = None) -> None:
        child = self.tracer.start_span(name, context=parent, start_time=start_ns, attributes=attributes or {})
        child.end(end_time=max(start_ns, end_ns))

    def shutdown(self) -> None:
        self.provider.shutdown()


def otlp_observer(endpoint: str) -> TracingObserver | None:
    """Spans exported over OTLP/gRPC to `endpoint`; None (with a warning) without the extra."""
    if not AVAILABLE:
        log.warning("--otlp-endpoint is set but OpenTelemetry is not installed (pip install 'lychee-grpc[otel]'); "
                    "traces are off")
        return None
    try:
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    except ImportError:
        log.warning("--otlp-endpoint is set but the OTLP exporter is not installed "
                    "(pip install 'lychee-grpc[otel]'); traces are off")
        return None
    exporter: SpanExporter = OTLPSpanExporter(endpoint=endpoint, insecure=endpoint.startswith("http://"))
    return TracingObserver(BatchSpanProcessor(exporter))
