"""A Job: the documents of one request, the stream of their scores, and the request's shared
prefix keys/values. The scheduler delivers scores and failures into it; its caller reads
`results()` and closes or cancels it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .types import RequestStats, Score

if TYPE_CHECKING:  # the job itself needs no torch
    from .lm.executor import PrefixKV
    from .prompt.prepare import PreparedQuery


@dataclass(eq=False)
class Job:
    """The documents of one RPC, their results, and the request's shared prefix."""

    query: PreparedQuery
    deadline: float | None  # time.monotonic() value
    stats: RequestStats = field(default_factory=RequestStats)
    prefix_kv: PrefixKV | None = None
    cancelled: bool = False
    closed: bool = False  # no more documents will be added
    next_index: int = 0
    outstanding: int = 0
    error: Exception | None = None
    _results: asyncio.Queue[Score | Exception | None] = field(default_factory=asyncio.Queue)
    _batches_seen: set[int] = field(default_factory=set)

    def expired(self, now: float | None = None) -> bool:
        return self.deadline is not None and (now or time.monotonic()) >= self.deadline

    def alive(self) -> bool:
        return not self.cancelled and self.error is None and not self.expired()

    def cancel(self) -> None:
        self.cancelled = True
        self.prefix_kv = None

    def deliver(self, score: Score) -> None:
        self.outstanding -= 1
        self._results.put_nowait(score)
        self.release_if_done()

    def fail(self, error: Exception) -> None:
        if self.error is None:
            self.error = error
            self._results.put_nowait(error)
        self.prefix_kv = None

    def close(self) -> None:
        self.closed = True
        self._results.put_nowait(None)
        self.release_if_done()

    def release_if_done(self) -> None:
        if self.closed and self.outstanding == 0:
            self.prefix_kv = None  # the prefix is not needed once every document is scored

    async def results(self) -> AsyncIterator[Score]:
        """Scores as they are computed, until the job is closed and everything is scored."""
        closed = False
        while True:
            # `outstanding` drops when a score is queued, so the queue must be drained too.
            if closed and self.outstanding == 0 and self._results.empty():
                return
            item = await self._results.get()
            if item is None:
                closed = True
                continue
            if isinstance(item, Exception):
                raise item
            yield item
