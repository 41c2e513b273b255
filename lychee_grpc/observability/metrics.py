"""Prometheus metrics: every metric defined once, on its own registry.

Three kinds of source feed them. Each transport calls `request_done` once per call (requests by
method, transport and code; latency). The service calls `request_finished` once per scored
request (documents, tokens, preprocess time). The engine calls the `StatsObserver` callbacks as it
works (batch sizes, inference and queue time). Gauges and the engine's own counters (queue depth,
documents scored, cache, OOM splits, GPU memory) are read from the engine client's `stats()` (one
snapshot per device) at scrape time, so they cannot drift from the engine's truth. The engine
never imports this module.
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

from ..engine.stats import EngineStats
from ..engine.types import RequestStats
from ..service.score_cache import ScoreCacheStats
from .requests import RequestRecord

log = logging.getLogger(__name__)

# 5 ms to 30 s.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
DOCUMENT_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 5000)
TOKEN_BUCKETS = (64, 256, 1024, 2048, 4096, 8192, 16384, 32768, 65536, 131072, 524288)


class EngineCollector(Collector):
    """Reads the engine client's snapshots (`stats()`, one EngineStats per device, none while
    loading) and the requests in flight at scrape time."""

    def __init__(self, stats: Callable[[], list[EngineStats]], in_flight: Callable[[], int], per_device: bool):
        self._stats = stats
        self._in_flight = in_flight
        self._per_device = per_device  # worker processes: each device's share as well

    def describe(self) -> Iterable[Metric]:
        return []  # metrics appear once the engine is loaded; no names are checked at registration

    def collect(self) -> Iterable[Metric]:
        yield GaugeMetricFamily("lychee_requests_in_flight", "Requests being served now (all transports).",
                                value=self._in_flight())
        try:
            snapshots = self._stats()
        except Exception:  # a scrape never fails because the engine is loading or stopping
            snapshots = []
        if not snapshots:
            return
        if self._per_device:
            yield from _per_device(snapshots)
        stats = _combined(snapshots)
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
        alone = CounterMetricFamily("lychee_oom_documents",
                                    "Documents that ran out of GPU memory in a pass of their own: tried once more "
                                    "(retried), or refused with RESOURCE_EXHAUSTED or, over a batch's token bound, "
                                    "INVALID_ARGUMENT after the second try (refused).", labels=["outcome"])
        alone.add_metric(["retried"], stats.oom_retries)
        alone.add_metric(["refused"], stats.oom_refusals)
        yield alone
        yield CounterMetricFamily("lychee_prefix_tokens_saved",
                                  "Tokens reused instead of recomputed: the shared prefix (instruction and query), and "
                                  "heads that documents of a request share.",
                                  value=stats.prefix_tokens_saved)
        yield from _cache_families(
            "image_cache", ("Images whose vision-tower output was cached.",
                            "Images that went through the vision tower.",
                            "Bytes held by the vision-tower output cache.",
                            "Byte bound of the vision-tower output cache."),
            stats.image_cache_hits, stats.image_cache_misses, stats.image_cache_bytes, stats.image_cache_capacity_bytes)
        yield from _cache_families(
            "token_cache", ("Documents' text runs whose token ids were held from an earlier request.",
                            "Documents' text runs that went through the tokenizer.",
                            "Bytes held by the token cache of documents' text.",
                            "Byte bound of the token cache (--token-cache-mib)."),
            stats.token_cache_hits, stats.token_cache_misses, stats.token_cache_bytes, stats.token_cache_capacity_bytes)
        allocated = GaugeMetricFamily("lychee_gpu_memory_allocated_bytes", "GPU memory allocated by tensors.",
                                      labels=["device"])
        reserved = GaugeMetricFamily("lychee_gpu_memory_reserved_bytes", "GPU memory reserved by the allocator.",
                                     labels=["device"])
        for memory in stats.gpu_memory:
            allocated.add_metric([memory.device], memory.allocated_bytes)
            reserved.add_metric([memory.device], memory.reserved_bytes)
        yield allocated
        yield reserved


class ScoreCacheCollector(Collector):
    """Reads the service's pair-score cache and single-flight counters at scrape time."""

    def __init__(self, stats: Callable[[], ScoreCacheStats]):
        self._stats = stats

    def describe(self) -> Iterable[Metric]:
        return []

    def collect(self) -> Iterable[Metric]:
        s = self._stats()
        yield CounterMetricFamily("lychee_score_cache_hits", "Documents answered from the pair-score cache.",
                                  value=s.hits)
        yield CounterMetricFamily("lychee_score_cache_misses",
                                  "Distinct pairs looked up in the pair-score cache and not found.", value=s.misses)
        yield CounterMetricFamily("lychee_score_cache_evictions",
                                  "Pairs evicted from the pair-score cache to stay within its bound.",
                                  value=s.evictions)
        yield CounterMetricFamily("lychee_score_cache_coalesced",
                                  "Documents answered by the same pair already queued or running for another request.",
                                  value=s.coalesced)
        yield CounterMetricFamily("lychee_documents_deduplicated",
                                  "Documents answered by an identical document earlier in the same request.",
                                  value=s.deduplicated)
        yield GaugeMetricFamily("lychee_score_cache_bytes", "Bytes held by the pair-score cache (320 a pair).",
                                value=s.bytes)
        yield GaugeMetricFamily("lychee_score_cache_capacity_bytes",
                                "Byte bound of the pair-score cache (--score-cache-mib).", value=s.capacity_bytes)
        yield GaugeMetricFamily("lychee_score_cache_entries", "Pairs held by the pair-score cache.", value=s.entries)


def _per_device(snapshots: list[EngineStats]) -> Iterable[Metric]:
    """Each device's share, to see that every GPU is busy."""
    batches = CounterMetricFamily("lychee_worker_batches", "Model batches run, per device.", labels=["device"])
    scored = CounterMetricFamily("lychee_worker_documents_scored", "Documents scored, per device.",
                                 labels=["device"])
    queued = GaugeMetricFamily("lychee_worker_queue_tokens", "Tokens queued for a model batch, per device.",
                               labels=["device"])
    for snapshot in sorted(snapshots, key=lambda s: s.device):
        batches.add_metric([snapshot.device], snapshot.batches)
        scored.add_metric([snapshot.device], snapshot.documents_scored)
        queued.add_metric([snapshot.device], snapshot.queue_tokens)
    yield from (batches, scored, queued)


def _cache_families(name: str, helps: tuple[str, str, str, str], hits: int, misses: int, held: int,
                    capacity: int) -> Iterable[Metric]:
    """A cache's hits and misses (counters), and the bytes it holds and may hold (gauges)."""
    yield CounterMetricFamily(f"lychee_{name}_hits", helps[0], value=hits)
    yield CounterMetricFamily(f"lychee_{name}_misses", helps[1], value=misses)
    yield GaugeMetricFamily(f"lychee_{name}_bytes", helps[2], value=held)
    yield GaugeMetricFamily(f"lychee_{name}_capacity_bytes", helps[3], value=capacity)


def _combined(snapshots: list[EngineStats]) -> EngineStats:
    """One snapshot for every device's engine: counts summed, GPU memory per device."""
    if len(snapshots) == 1:
        return snapshots[0]
    # Every field but these three is a count or a gauge that adds up over devices.
    fields: dict[str, Any] = {"device": ",".join(s.device for s in snapshots),
                              "gpu_memory": tuple(m for s in snapshots for m in s.gpu_memory),
                              "documents_dropped": {reason: sum(s.documents_dropped.get(reason, 0) for s in snapshots)
                                                    for reason in snapshots[0].documents_dropped}}
    for field in dataclasses.fields(EngineStats):
        if field.name not in fields:
            fields[field.name] = sum(getattr(s, field.name) for s in snapshots)
    return EngineStats(**fields)


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

    def watch_engine(self, stats: Callable[[], list[EngineStats]], in_flight: Callable[[], int],
                     per_device: bool = False) -> None:
        self.registry.register(EngineCollector(stats, in_flight, per_device))

    def watch_score_cache(self, stats: Callable[[], ScoreCacheStats]) -> None:
        self.registry.register(ScoreCacheCollector(stats))

    def set_build_info(self, version: str, model: str, dtype: str, device: str) -> None:
        self.build_info.clear()
        self.build_info.labels(version=version, model=model, dtype=dtype, device=device).set(1)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)

    # ---- transports (RequestObserver) ---------------------------------------------------
    def request_done(self, transport: str, method: str, code: str, seconds: float, request_id: str, peer: str,
                     record: RequestRecord | None = None) -> None:
        self.requests.labels(method=method, transport=transport, code=code).inc()
        self.request_seconds.labels(method=method, transport=transport).observe(seconds)

    # ---- the service (ServiceObserver) --------------------------------------------------
    def request_finished(self, method: str, documents: int, stats: RequestStats, truncated: int) -> None:
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

    def oom_alone(self, retried: int, refused: int) -> None:
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
