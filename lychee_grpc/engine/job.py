"""A Job: the documents of one request, the stream of their scores, and the request's shared
prefix keys/values. Its caller adds documents, reads `results()` and closes or cancels it (the
`JobHandle` face); the scheduler delivers scores and failures into it and changes its counts only
through its methods."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .api import IndexedDocument, Truncation, each_score
from .types import Query, RequestStats, Score
from .util.inbox import Inbox

if TYPE_CHECKING:  # the job itself needs no torch
    from .lm.executor import PrefixKV
    from .prompt.prepared import PreparedDocument, PreparedQuery

# Prepares and queues a job's documents (the engine's), returning each one's prompt tokens.
Intake = Callable[["Job", Sequence[IndexedDocument]], Awaitable[list[int]]]


@dataclass(eq=False)
class Job:
    request: tuple[Query, str]  # the query and instruction, prepared with the job's first documents
    deadline: float | None  # time.monotonic() value
    intake: Intake
    truncation: Truncation = Truncation.NONE
    max_tokens_per_document: int = 0  # resolved by the engine: never 0 here
    stats: RequestStats = field(default_factory=RequestStats)
    prefix_kv: PrefixKV | None = None
    cancelled: bool = False
    closed: bool = False  # no more documents will be added
    error: BaseException | None = None
    _outstanding: int = 0  # documents queued and not yet scored, dropped or failed
    _results: Inbox[Score | BaseException | None] = field(default_factory=Inbox)
    _batches_seen: set[int] = field(default_factory=set)
    _query: PreparedQuery | None = None
    # Set while the first documents' call prepares the query; a call beside it waits on it.
    query_ready: asyncio.Future[None] | None = None

    @property
    def query(self) -> PreparedQuery:
        if self._query is None:
            raise RuntimeError("the job's query is prepared with its first documents")
        return self._query

    @property
    def query_prepared(self) -> bool:
        return self._query is not None

    # ---- the caller's face (JobHandle) --------------------------------------------------
    async def add_documents(self, documents: Sequence[IndexedDocument]) -> list[int]:
        return await self.intake(self, documents)

    def cancel(self) -> None:
        self.cancelled = True
        self.prefix_kv = None

    def fail(self, error: BaseException) -> None:
        if self.error is None:
            self.error = error
            self._results.put(error)
        self.prefix_kv = None

    def close(self) -> None:
        self.closed = True
        self._results.put(None)
        self._release_if_done()

    def results(self) -> AsyncIterator[Score]:
        """Scores as they are computed, until the job is closed and everything is scored."""
        return each_score(self.result_batches())

    async def result_batches(self) -> AsyncIterator[list[Score]]:
        closed = False
        while True:
            # `_outstanding` drops when a score is queued, so the queue must be drained too.
            if closed and self._outstanding == 0 and self._results.empty():
                return
            scores: list[Score] = []
            for item in await self._results.get_all():
                if item is None:
                    closed = True
                elif isinstance(item, BaseException):
                    if scores:  # what arrived before the error is still answered first
                        yield scores
                    raise item
                else:
                    scores.append(item)
            if scores:
                yield scores

    # ---- state --------------------------------------------------------------------------
    def expired(self, now: float | None = None) -> bool:
        return self.deadline is not None and (now or time.monotonic()) >= self.deadline

    def alive(self) -> bool:
        return not self.cancelled and self.error is None and not self.expired()

    # ---- the engine's and the scheduler's steps -----------------------------------------
    def query_is(self, query: PreparedQuery) -> None:
        """The query, prepared (its time is counted with the documents it was prepared with)."""
        self._query = query
        self.stats.usage.images += len(query.images)

    def prepared(self, documents: Sequence[PreparedDocument], milliseconds: float) -> None:
        """Documents validated and tokenized (not yet queued)."""
        self.stats.timings.preprocess_ms += milliseconds
        usage = self.stats.usage
        for doc in documents:
            usage.prompt_tokens += doc.prompt_tokens
            usage.images += doc.images
            usage.cached_images += doc.cached_images

    def queued(self, count: int) -> None:
        self._outstanding += count

    def waited(self, seconds: float) -> None:
        """One document's wait in the queue; the request's is its longest."""
        self.stats.timings.queue_ms = max(self.stats.timings.queue_ms, seconds * 1e3)

    def in_batch(self, batch: int, start: float, seconds: float) -> None:
        """A model batch (counted once per job) held some of the job's documents."""
        if batch not in self._batches_seen:
            self._batches_seen.add(batch)
            self.stats.timings.inference_ms += seconds * 1e3
            self.stats.batches.append((start, start + seconds))

    def computed(self, tokens: int) -> None:
        self.stats.usage.computed_tokens += tokens

    def deliver(self, score: Score) -> None:
        self._outstanding -= 1
        self._results.put(score)
        self._release_if_done()

    def unscored(self, error: BaseException | None = None) -> None:
        """One queued document left without a score: dropped (cancelled, expired), or failed with
        `error`."""
        self._outstanding -= 1
        if error is not None:
            self.fail(error)
        self._release_if_done()

    def _release_if_done(self) -> None:
        if self.closed and self._outstanding == 0:
            self.prefix_kv = None  # the prefix is not needed once every document is scored
