"""Engine statistics through one seam.

The scheduler, the executor and the engine report what happens through `StatsObserver`
callbacks; `StatsRecorder` is the one owner of the engine's counters (it implements the same
callbacks and forwards each to an optional outside observer, such as a metrics exporter).
`EngineStats` is a frozen snapshot of one device's engine (`Engine.stats()`): the counters plus the gauges read at
snapshot time (queue depth, cache bytes, GPU memory). Nothing here imports a metrics library.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Protocol

# Why documents left the queue without a score.
CANCELLED = "cancelled"  # the caller cancelled the request
DEADLINE = "deadline"  # the request's deadline passed first
DROP_REASONS = (CANCELLED, DEADLINE)


@dataclass(frozen=True)
class DeviceMemory:
    device: str
    allocated_bytes: int  # 0 on a CPU
    reserved_bytes: int


@dataclass(frozen=True)
class EngineStats:
    device: str  # the engine's device (a worker pool's label: cpu:1 when two workers share the CPU)
    queue_documents: int
    queue_tokens: int
    preparing_requests: int  # calls between validation and queueing
    documents_scored: int
    documents_dropped: dict[str, int]  # by reason: cancelled, deadline
    batches: int
    batch_seconds: float  # time the GPU thread spent on batches
    oom_splits: int
    oom_retries: int  # documents that ran out of GPU memory alone and were tried once more
    oom_refusals: int  # documents refused after running out of GPU memory alone twice
    prefix_tokens_saved: int  # shared-prefix tokens not recomputed per document
    image_cache_hits: int
    image_cache_misses: int
    image_cache_bytes: int
    image_cache_capacity_bytes: int
    gpu_memory: tuple[DeviceMemory, ...]


class StatsObserver(Protocol):
    """What the engine reports as it works. Called from the event loop and from the engine's
    worker threads: an implementation must be thread-safe and must not block."""

    def batch_done(self, documents: int, tokens: int, images: int, seconds: float) -> None: ...

    def documents_dropped(self, count: int, reason: str) -> None: ...

    def oom_split(self) -> None: ...

    def oom_alone(self, retried: int, refused: int) -> None: ...

    def image_cache(self, hits: int, misses: int) -> None: ...

    def prefix_saved(self, tokens: int) -> None: ...

    def queue_wait(self, seconds: float) -> None: ...


class NullObserver:
    """Observes nothing."""

    def batch_done(self, documents: int, tokens: int, images: int, seconds: float) -> None:
        pass

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

    def queue_wait(self, seconds: float) -> None:
        pass


@dataclass(frozen=True)
class Counters:
    documents_scored: int = 0
    documents_dropped_cancelled: int = 0
    documents_dropped_deadline: int = 0
    batches: int = 0
    batch_seconds: float = 0.0
    oom_splits: int = 0
    oom_retries: int = 0
    oom_refusals: int = 0
    prefix_tokens_saved: int = 0
    image_cache_hits: int = 0
    image_cache_misses: int = 0


class StatsRecorder:
    """The engine's counters, changed only through the observer callbacks, each of which is also
    forwarded to `observer`."""

    def __init__(self, observer: StatsObserver | None = None):
        self.observer: StatsObserver = observer if observer is not None else NullObserver()
        self._lock = threading.Lock()
        self._scored = 0
        self._dropped = dict.fromkeys(DROP_REASONS, 0)
        self._batches = 0
        self._batch_seconds = 0.0
        self._oom_splits = 0
        self._oom_retries = 0
        self._oom_refusals = 0
        self._prefix_saved = 0
        self._hits = 0
        self._misses = 0

    def counters(self) -> Counters:
        with self._lock:
            return Counters(
                documents_scored=self._scored,
                documents_dropped_cancelled=self._dropped[CANCELLED],
                documents_dropped_deadline=self._dropped[DEADLINE],
                batches=self._batches,
                batch_seconds=self._batch_seconds,
                oom_splits=self._oom_splits,
                oom_retries=self._oom_retries,
                oom_refusals=self._oom_refusals,
                prefix_tokens_saved=self._prefix_saved,
                image_cache_hits=self._hits,
                image_cache_misses=self._misses,
            )

    def batch_done(self, documents: int, tokens: int, images: int, seconds: float) -> None:
        with self._lock:
            self._scored += documents
            self._batches += 1
            self._batch_seconds += seconds
        self.observer.batch_done(documents, tokens, images, seconds)

    def documents_dropped(self, count: int, reason: str) -> None:
        if reason not in self._dropped:
            raise ValueError(f"unknown drop reason {reason!r}; expected one of {DROP_REASONS}")
        with self._lock:
            self._dropped[reason] += count
        self.observer.documents_dropped(count, reason)

    def oom_split(self) -> None:
        with self._lock:
            self._oom_splits += 1
        self.observer.oom_split()

    def oom_alone(self, retried: int, refused: int) -> None:
        """Documents that ran out of GPU memory in a pass of their own: `retried` tried once more,
        `refused` refused after their second try."""
        with self._lock:
            self._oom_retries += retried
            self._oom_refusals += refused
        self.observer.oom_alone(retried, refused)

    def image_cache(self, hits: int, misses: int) -> None:
        with self._lock:
            self._hits += hits
            self._misses += misses
        self.observer.image_cache(hits, misses)

    def prefix_saved(self, tokens: int) -> None:
        with self._lock:
            self._prefix_saved += tokens
        self.observer.prefix_saved(tokens)

    def queue_wait(self, seconds: float) -> None:
        self.observer.queue_wait(seconds)
