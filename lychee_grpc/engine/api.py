"""The one seam between the service and whatever scores: `EngineClient` and `JobHandle`.

Both the in-process `Engine` and the `WorkerPool` of engine processes implement these directly, so
the service (and anything it grows, such as a pair-score cache) sees one shape. A job is one
request: the caller names each document's index in the request (so it may leave out documents it
answers itself), `add_documents` returns each document's exact prompt-token count, and `results()`
streams each document's `Score` as it is computed. `EngineInfo` and `EngineStats` are snapshots
out of it; no torch is imported here.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field, fields
from enum import Enum
from typing import Protocol

from .stats import EngineStats
from .types import Document, Query, RequestStats, Score

__all__ = [
    "CacheInfo",
    "EngineClient",
    "EngineInfo",
    "EngineLimits",
    "ImageCacheInfo",
    "IndexedDocument",
    "JobHandle",
    "JobResult",
    "Truncation",
    "each_score",
    "score_documents",
]

# A document and its index in the request: its `Score.index` and the `documents[i]` of its errors.
IndexedDocument = tuple[int, Document]


class Truncation(str, Enum):
    """What happens to a document over its token limit."""

    NONE = "none"  # refused (TooLarge)
    END = "end"  # the end of its text is cut to fit; images are never cut


@dataclass(frozen=True)
class EngineLimits:
    """Per-request limits the engine enforces, named like the lychee.v1 Limits fields they become."""

    max_documents_per_request: int
    max_tokens_per_document: int
    max_query_tokens: int
    max_instruction_tokens: int
    max_image_bytes: int
    max_image_pixels: int
    min_image_model_pixels: int
    max_image_model_pixels: int
    max_queue_documents: int


@dataclass(frozen=True)
class CacheInfo:
    """A cache of the engine's (summed over devices): the vision-tower output cache, and the token
    cache of documents' text (prompt/run_ids.py)."""

    bytes: int = 0
    capacity_bytes: int = 0
    hits: int = 0
    misses: int = 0

    def __add__(self, other: CacheInfo) -> CacheInfo:
        return CacheInfo(*(getattr(self, f.name) + getattr(other, f.name) for f in fields(self)))


ImageCacheInfo = CacheInfo  # its name while the image cache was the engine's only one


@dataclass(frozen=True)
class EngineInfo:
    """What the engine serves: the model, its limits, its caches and the devices it runs on."""

    model: str
    dtype: str
    attention: str
    random_weights: bool
    parameters: int
    default_instruction: str
    limits: EngineLimits
    image_cache: CacheInfo = field(default_factory=CacheInfo)
    devices: tuple[str, ...] = ()
    batch_invariant: bool = False
    # A digest of the checkpoint's weight files (model/loader.py's weights_fingerprint): part of
    # the service's pair-score cache key.
    weights: str = ""
    token_cache: CacheInfo = field(default_factory=CacheInfo)

    @classmethod
    def combined(cls, infos: Sequence[EngineInfo]) -> EngineInfo:
        """One engine per device, the same model and limits: devices listed, caches summed."""
        first = infos[0]
        cache, tokens = CacheInfo(), CacheInfo()
        for info in infos:
            cache += info.image_cache
            tokens += info.token_cache
        return cls(first.model, first.dtype, first.attention, first.random_weights, first.parameters,
                   first.default_instruction, first.limits, cache, tuple(d for i in infos for d in i.devices),
                   first.batch_invariant, first.weights, tokens)


class JobHandle(Protocol):
    """The documents of one request, and their scores as they are computed."""

    # Final once the results have ended: an engine may count a job's usage only with its end,
    # after the last score (the worker pool does).
    stats: RequestStats

    async def add_documents(self, documents: Sequence[IndexedDocument]) -> list[int]:
        """Validates, prepares and queues documents (raising InvalidInput that names every bad
        `documents[i]`); returns each one's prompt tokens (the whole prompt, image tokens included:
        what `Usage.prompt_tokens` adds up), in order."""
        ...

    def close(self) -> None:
        """No more documents will be added."""
        ...

    def cancel(self) -> None:
        """Drops the job's remaining work."""
        ...

    def fail(self, error: BaseException) -> None:
        """Ends the job's results with this error."""
        ...

    def results(self) -> AsyncIterator[Score]:
        """Scores as they are computed, until the job is closed and everything is scored."""
        ...

    def result_batches(self) -> AsyncIterator[list[Score]]:
        """`results()` in lists: each list what arrived together (a model batch's scores), so a
        reader pays one wake-up per batch rather than per document."""
        ...


async def each_score(batches: AsyncIterator[list[Score]]) -> AsyncIterator[Score]:
    """`result_batches()` one score at a time (what `results()` is)."""
    async for batch in batches:
        for score in batch:
            yield score


class EngineClient(Protocol):
    """What the service needs from an engine, wherever it runs."""

    @property
    def workers(self) -> int:
        """Engine workers (devices) behind this client."""
        ...

    @property
    def ready(self) -> bool: ...

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    def on_failure(self, callback: Callable[[str], None]) -> None:
        """`callback(reason)` once the client can no longer score (a dead scheduler or worker)."""
        ...

    async def open_job(
        self,
        query: Query,
        instruction: str = "",
        truncation: Truncation = Truncation.NONE,
        max_tokens_per_document: int = 0,
        deadline: float | None = None,
    ) -> JobHandle:
        """A job for `query` ("" instruction: the server's default). A document over
        `max_tokens_per_document` (0: the engine's limit; the caller keeps it within that limit)
        is refused or truncated as `truncation` says. `deadline` is a time.monotonic() value."""
        ...

    def info(self) -> EngineInfo: ...

    def stats(self) -> list[EngineStats]:
        """The counters and gauges of each device's engine now (as last reported, for workers)."""
        ...


@dataclass
class JobResult:
    scores: list[Score]  # in index order
    stats: RequestStats


async def score_documents(
    client: EngineClient,
    query: Query,
    documents: Sequence[Document],
    instruction: str = "",
    deadline: float | None = None,
) -> JobResult:
    """Every document scored in one job, for warm-up, tests and benchmarks (the service owns the
    ranking and every request option)."""
    job = await client.open_job(query, instruction, deadline=deadline)
    try:
        await job.add_documents(list(enumerate(documents)))
        job.close()
        scores = [score async for score in job.results()]
    except BaseException:
        job.cancel()
        raise
    scores.sort(key=lambda score: score.index)
    return JobResult(scores, job.stats)
