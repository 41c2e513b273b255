"""Engine statistics through one seam.

The scheduler, the executor and the engine report what happens through `StatsObserver`
callbacks; `StatsRecorder` is the one owner of the engine's counters (it implements the same
callbacks and forwards each to an optional outside observer, such as a metrics exporter).
`Counters` are those counters at one moment; `EngineStats` is a frozen snapshot of one device's engine
(`Engine.stats()`): the counters plus the gauges read at snapshot time (queue depth, cache bytes, GPU
memory). Nothing here imports a metrics library.
"""

from __future__ import annotations

import dataclasses
import threading
from dataclasses import dataclass, field
from typing import Any, Protocol

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
class Counters:
    """The engine's counters at one moment. Never changed in place (the dict included): the recorder
    swaps in a new instance at each event, so a snapshot keeps the values it was read with."""

    documents_scored: int = 0
    documents_dropped: dict[str, int] = field(default_factory=lambda: dict.fromkeys(DROP_REASONS, 0))  # by reason
    batches: int = 0
    batch_seconds: float = 0.0  # time the GPU thread spent on batches
    oom_splits: int = 0
    oom_retries: int = 0  # documents that ran out of GPU memory alone and were tried once more
    oom_refusals: int = 0  # documents refused after running out of GPU memory alone twice
    prefix_tokens_saved: int = 0  # shared-prefix tokens not recomputed per document
    image_cache_hits: int = 0
    image_cache_misses: int = 0

    def by_name(self) -> dict[str, Any]:
        """Each counter by its field name (shallow: the drop dict is shared, which is safe because
        it is never changed in place): what an `EngineStats` is built from, with the gauges."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(Counters)}


# Derived from Counters so that a new counter reaches every snapshot (and the worker pool's pipe)
# without being listed again; keyword-only because the counters' defaults come first.
@dataclass(frozen=True, kw_only=True)
class EngineStats(Counters):
    device: str  # the engine's device (a worker pool's label: cpu:1 when two workers share the CPU)
    queue_documents: int
    queue_tokens: int
    preparing_requests: int  # calls between validation and queueing
    image_cache_bytes: int
    image_cache_capacity_bytes: int
    gpu_memory: tuple[DeviceMemory, ...]
    # Documents' text runs answered from the token cache, and tokenized (prompt/run_ids.py).
    token_cache_hits: int = 0
    token_cache_misses: int = 0
    token_cache_bytes: int = 0
    token_cache_capacity_bytes: int = 0


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


class StatsRecorder:
    """The engine's counters, changed only through the observer callbacks, each of which is also
    forwarded to `observer`."""

    def __init__(self, observer: StatsObserver | None = None):
        self.observer: StatsObserver = observer if observer is not None else NullObserver()
        self._lock = threading.Lock()
        self._counters = Counters()

    def counters(self) -> Counters:
        with self._lock:
            return self._counters

    def _add(self, **amounts: float) -> None:
        """Adds each amount to the counter of that name; the lock makes read-and-swap one step
        against the worker threads' events."""
        with self._lock:
            counters = self._counters
            self._counters = dataclasses.replace(
                counters, **{name: getattr(counters, name) + amount for name, amount in amounts.items()})

    def batch_done(self, documents: int, tokens: int, images: int, seconds: float) -> None:
        self._add(documents_scored=documents, batches=1, batch_seconds=seconds)
        self.observer.batch_done(documents, tokens, images, seconds)

    def documents_dropped(self, count: int, reason: str) -> None:
        if reason not in DROP_REASONS:
            raise ValueError(f"unknown drop reason {reason!r}; expected one of {DROP_REASONS}")
        with self._lock:
            counters = self._counters
            dropped = counters.documents_dropped
            # A new dict: earlier snapshots share the old one.
            dropped = {**dropped, reason: dropped[reason] + count}
            self._counters = dataclasses.replace(counters, documents_dropped=dropped)
        self.observer.documents_dropped(count, reason)

    def oom_split(self) -> None:
        self._add(oom_splits=1)
        self.observer.oom_split()

    def oom_alone(self, retried: int, refused: int) -> None:
        """Documents that ran out of GPU memory in a pass of their own: `retried` tried once more,
        `refused` refused after their second try."""
        self._add(oom_retries=retried, oom_refusals=refused)
        self.observer.oom_alone(retried, refused)

    def image_cache(self, hits: int, misses: int) -> None:
        self._add(image_cache_hits=hits, image_cache_misses=misses)
        self.observer.image_cache(hits, misses)

    def prefix_saved(self, tokens: int) -> None:
        self._add(prefix_tokens_saved=tokens)
        self.observer.prefix_saved(tokens)

    def queue_wait(self, seconds: float) -> None:
        self.observer.queue_wait(seconds)
