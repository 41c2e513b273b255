"""Prometheus metrics: every metric defined once, on its own registry.

Three kinds of source feed them. Each transport calls `request_done` once per call (requests by
method, transport and code; latency). The service calls `request_finished` once per scored
request (documents, tokens, preprocess time). The engine calls the `StatsObserver` callbacks as it
works (batch sizes, inference and queue time). Gauges and the engine's own counters (queue depth,
documents scored, cache, OOM splits, GPU memory) are read from `Engine.stats()` at scrape time,
so they cannot drift from the engine's truth. The engine never imports this module.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import Collector

log = logging.getLogger(__name__)

# 5 ms to 30 s.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
DOCUMENT_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 5000)
TOKEN_BUCKETS = (64, 256, 1024, 2048, 4096, 8192, 16384, 32768, 65536, 131072, 524288)


class EngineCollector(Collector):
    """Reads the engine's snapshot (`stats()`, an EngineStats, None while loading) and the
    requests in flight at scrape time."""

    def __init__(self, stats: Callable[[], Any], in_flight: Callable[[], int]):
        self._stats = stats
        self._in_flight = in_flight

    def describe(self) -> Iterable[Metric]:
        return []  # metrics appear once the engine is loaded; no names are checked at registration

    def collect(self) -> Iterable[Metric]:
        yield GaugeMetricFamily("lychee_requests_in_flight", "Requests being served now (all transports).",
                                value=self._in_flight())
        try:
            stats = self._stats()
        except Exception:  # a scrape never fails because the engine is loading or stopping
            stats = None
        if isinstance(stats, dict):  # worker processes: {device: EngineStats}
            yield from _per_device(stats)
            stats = _combined(list(stats.values()))
        if stats is None:
            return
        yield GaugeMetricFamily("lychee_queue_documents", "Documents waiting for a model batch.",
                                value=stats.queue_documents)
        yield GaugeMetricFamily("lychee_queue_tokens", "Tokens of the documents waiting for a model batch.",
                                value=stats.queue_tokens)
        yield CounterMetricFamily("lychee_documents_scored", "Documents the model scored.",
                                  value=stats.documents_scored)
        dropped = CounterMetricFamily("lychee_documents_dropped",
                                      "Documents dropped unscored because their request was cancelled or expired.",
                                      labels=["reason"])
        for reason, count in sorted(stats.documents_dropped.items()):
            dropped.add_metric([reason], count)
        yield dropped
        yield CounterMetricFamily("lychee_batches", "Model batches run.", value=stats.batches)
        yield CounterMetricFamily("lychee_oom_splits", "Batches split in two after running out of GPU memory.",
                                  value=stats.oom_splits)
        yield CounterMetricFamily("lychee_prefix_tokens_saved",
                                  "Shared-prefix (instruction and query) tokens reused instead of recomputed.",
                                  value=stats.prefix_tokens_saved)
        yield CounterMetricFamily("lychee_image_cache_hits", "Images whose vision-tower output was cached.",
                                  value=stats.image_cache_hits)
        yield CounterMetricFamily("lychee_image_cache_misses", "Images that went through the vision tower.",
                                  value=stats.image_cache_misses)
        yield GaugeMetricFamily("lychee_image_cache_bytes", "Bytes held by the vision-tower output cache.",
                                value=stats.image_cache_bytes)
        yield GaugeMetricFamily("lychee_image_cache_capacity_bytes", "Byte bound of the vision-tower output cache.",
                                value=stats.image_cache_capacity_bytes)
        allocated = GaugeMetricFamily("lychee_gpu_memory_allocated_bytes", "GPU memory allocated by tensors.",
                                      labels=["device"])
        reserved = GaugeMetricFamily("lychee_gpu_memory_reserved_bytes", "GPU memory reserved by the allocator.",
                                     labels=["device"])
        for memory in stats.gpu_memory:
            allocated.add_metric([memory.device], memory.allocated_bytes)
            reserved.add_metric([memory.device], memory.reserved_bytes)
        yield allocated
        yield reserved


def _per_device(stats: dict[str, Any]) -> Iterable[Metric]:
    """With one worker per device: each device's share, to see that every GPU is busy."""
    batches = CounterMetricFamily("lychee_worker_batches", "Model batches run, per device.", labels=["device"])
    scored = CounterMetricFamily("lychee_worker_documents_scored", "Documents scored, per device.",
                                 labels=["device"])
    queued = GaugeMetricFamily("lychee_worker_queue_tokens", "Tokens queued for a model batch, per device.",
                               labels=["device"])
    for device, snapshot in sorted(stats.items()):
        batches.add_metric([device], snapshot.batches)
        scored.add_metric([device], snapshot.documents_scored)
        queued.add_metric([device], snapshot.queue_tokens)
    yield from (batches, scored, queued)


def _combined(snapshots: list[Any]) -> Any:
    """One snapshot for several engines (one per device): counts summed, GPU memory per device."""
    if not snapshots:
        return None
    fields: dict[str, Any] = {}
    for name in vars(snapshots[0]):
        values = [getattr(s, name) for s in snapshots]
        if name == "gpu_memory":
            fields[name] = tuple(m for v in values for m in v)
        elif name == "documents_dropped":
            fields[name] = {k: sum(v.get(k, 0) for v in values) for k in values[0]}
        else:
            fields[name] = sum(values)
    return dataclasses.replace(snapshots[0], **fields)


class PrometheusObserver:
    """The request observer (transports), the service observer and the engine's StatsObserver,
    recording into one registry."""

    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.requests = Counter("lychee_requests", "Requests by method, transport and status code.",
                                ["method", "transport", "code"], registry=r)
        self.request_seconds = Histogram("lychee_request_duration_seconds", "Time from a call's start to its end.",
                                         ["method", "transport"], buckets=LATENCY_BUCKETS, registry=r)
        self.request_documents = Histogram("lychee_request_documents", "Documents per scored request.",
                                           ["method"], buckets=DOCUMENT_BUCKETS, registry=r)
        self.request_tokens = Histogram("lychee_request_tokens", "Prompt tokens per scored request.",
                                        ["method"], buckets=TOKEN_BUCKETS, registry=r)
        self.truncated = Counter("lychee_documents_truncated", "Documents whose text was cut to the token limit.",
                                 registry=r)
        self.preprocess_seconds = Histogram("lychee_preprocess_duration_seconds",
                                            "Validation, image decoding and tokenization per request.",
                                            buckets=LATENCY_BUCKETS, registry=r)
        self.queue_seconds = Histogram("lychee_queue_wait_seconds", "Time a document waited for its batch.",
                                       buckets=LATENCY_BUCKETS, registry=r)
        self.inference_seconds = Histogram("lychee_inference_duration_seconds", "Time one model batch ran.",
                                           buckets=LATENCY_BUCKETS, registry=r)
        self.batch_documents = Histogram("lychee_batch_documents", "Documents per model batch.",
                                         buckets=DOCUMENT_BUCKETS, registry=r)
        self.batch_tokens = Histogram("lychee_batch_tokens", "Tokens per model batch.",
                                      buckets=TOKEN_BUCKETS, registry=r)
        self.build_info = Gauge("lychee_build_info", "1, labelled with the server version and the model it serves.",
                                ["version", "model", "dtype", "device"], registry=r)

    def watch_engine(self, stats: Callable[[], Any], in_flight: Callable[[], int]) -> None:
        self.registry.register(EngineCollector(stats, in_flight))

    def set_build_info(self, version: str, model: str, dtype: str, device: str) -> None:
        self.build_info.clear()
        self.build_info.labels(version=version, model=model, dtype=dtype, device=device).set(1)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)

    # ---- transports (RequestObserver) ---------------------------------------------------
    def request_done(self, transport: str, method: str, code: str, seconds: float, request_id: str, peer: str,
                     record: Any = None) -> None:
        self.requests.labels(method=method, transport=transport, code=code).inc()
        self.request_seconds.labels(method=method, transport=transport).observe(seconds)

    # ---- the service (ServiceObserver) --------------------------------------------------
    def request_finished(self, method: str, documents: int, stats: Any, truncated: int) -> None:
        self.request_documents.labels(method=method).observe(documents)
        self.request_tokens.labels(method=method).observe(stats.usage.prompt_tokens)
        self.preprocess_seconds.observe(stats.timings.preprocess_ms / 1e3)
        if truncated:
            self.truncated.inc(truncated)

    # ---- the engine (StatsObserver): thread-safe, never blocks --------------------------
    def batch_done(self, documents: int, tokens: int, images: int, seconds: float) -> None:
        self.inference_seconds.observe(seconds)
        self.batch_documents.observe(documents)
        self.batch_tokens.observe(tokens)

    def queue_wait(self, seconds: float) -> None:
        self.queue_seconds.observe(seconds)

    # Counted by the engine itself and read at scrape time (EngineCollector).
    def documents_dropped(self, count: int, reason: str) -> None:
        pass

    def oom_split(self) -> None:
        pass

    def image_cache(self, hits: int, misses: int) -> None:
        pass

    def prefix_saved(self, tokens: int) -> None:
        pass


class MetricsExporter:
    """/metrics on its own port, served by prometheus_client's HTTP server on a thread."""

    def __init__(self, registry: CollectorRegistry, host: str, port: int):
        self.registry = registry
        self.host = host
        self.requested_port = port
        self.port = 0
        self._server: Any = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        try:
            self._server, self._thread = start_http_server(self.requested_port, self.host, registry=self.registry)
        except OSError as exc:
            raise OSError(f"cannot bind metrics on {self.host}:{self.requested_port}: {exc.strerror} (--metrics-port: "
                          "choose another port, or 0 to turn metrics off)") from exc
        self.port = self._server.server_port
        log.info("metrics on http://%s:%d/metrics", self.host, self.port)

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
