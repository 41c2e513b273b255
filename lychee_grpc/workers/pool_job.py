"""One request behind the worker pool: its documents spread over workers (a `WorkerShare` per
worker), their scores merged into one stream, cancellation and failures forwarded."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..engine.api import IndexedDocument, JobHandle, Truncation, each_score
from ..engine.errors import FieldViolation, InvalidInput, NotReady, TooLarge
from ..engine.types import Query, RequestStats, Score, Usage
from ..engine.util.inbox import Inbox
from ..service.errors import ErrorKind
from . import ipc
from .routing import guess_tokens

if TYPE_CHECKING:
    from .pool import WorkerPool, WorkerProcess


@dataclass(eq=False)
class WorkerShare:
    """A request's documents on one worker."""

    worker: WorkerProcess
    opened: asyncio.Future[None]
    tokens: dict[int, int] = field(default_factory=dict)  # request index -> tokens queued (a guess until Added)
    adds: dict[int, asyncio.Future[ipc.Added]] = field(default_factory=dict)  # by sequence number
    done: bool = False
    closed: bool = False

    def settle(self, index: int) -> None:
        """The document left the worker's queue: its tokens no longer count as queued there."""
        self.worker.queued_tokens -= self.tokens.pop(index, 0)


class PoolJob(JobHandle):
    def __init__(self, pool: WorkerPool, job_id: int, query: Query, instruction: str, truncation: Truncation,
                 max_tokens_per_document: int, deadline: float | None):
        self.pool = pool
        self.id = job_id
        self.query = query
        self.instruction = instruction
        self.truncation = truncation
        self.max_tokens_per_document = max_tokens_per_document
        self.deadline = deadline
        self.stats = RequestStats()
        self.shares: dict[int, WorkerShare] = {}  # by worker index
        self.closed = False
        self.cancelled = False
        self._events: Inbox[Score | BaseException | None] = Inbox()
        self._seq = itertools.count()

    # ---- from the pool's message loop ---------------------------------------------------
    def on_scored(self, share: WorkerShare, score: Score) -> None:
        share.settle(score.index)
        self._events.put(score)

    def on_done(self, share: WorkerShare, stats: RequestStats, error: ipc.WireError | None) -> None:
        share.done = True
        for index in list(share.tokens):
            share.settle(index)
        _add_usage(self.stats.usage, stats.usage)
        timings = self.stats.timings
        timings.preprocess_ms = max(timings.preprocess_ms, stats.timings.preprocess_ms)
        timings.queue_ms = max(timings.queue_ms, stats.timings.queue_ms)
        timings.inference_ms = max(timings.inference_ms, stats.timings.inference_ms)
        ended = error or ipc.WireError(ErrorKind.CANCELLED, "job ended")
        for future in share.adds.values():
            if not future.done():
                future.set_result(ipc.Added(self.id, -1, error=ended))
        if error is not None:
            self.fail(error.rebuild())
        self._events.put(None)

    def on_worker_died(self, share: WorkerShare, reason: str) -> None:
        error = NotReady(f"{reason}; retry")
        for future in [share.opened, *share.adds.values()]:
            if not future.done():
                future.set_exception(error)
        share.done = True
        self.fail(error)
        self._events.put(None)

    # ---- JobHandle ----------------------------------------------------------------------
    async def add_documents(self, documents: Sequence[IndexedDocument]) -> list[int]:
        assignment = self.pool.assign(documents)
        waits: list[tuple[WorkerShare, int, asyncio.Future[ipc.Added], list[int]]] = []
        for worker, items in assignment.items():
            share = self._share(worker)
            seq = next(self._seq)
            future: asyncio.Future[ipc.Added] = asyncio.get_running_loop().create_future()
            share.adds[seq] = future
            for index, doc in items:
                guess = guess_tokens(doc)
                share.tokens[index] = guess
                worker.queued_tokens += guess
            self.pool.send(worker, ipc.AddDocuments(self.id, seq, list(items)))
            waits.append((share, seq, future, [index for index, _ in items]))
        violations: list[FieldViolation] = []
        too_large = True  # every refusal was over a size limit: the request's refusal is too
        other: BaseException | None = None
        counted: dict[int, int] = {}
        for share, seq, future, indices in waits:
            await share.opened
            added = await future
            share.adds.pop(seq, None)
            if added.error is not None:
                exc = added.error.rebuild()
                if isinstance(exc, InvalidInput):
                    violations.extend(exc.violations)
                    too_large = too_large and isinstance(exc, TooLarge)
                else:
                    other = other or exc
                continue
            for index, tokens in zip(indices, added.tokens):  # the worker's count replaces the guess
                counted[index] = tokens
                if index in share.tokens:
                    share.worker.queued_tokens += tokens - share.tokens[index]
                    share.tokens[index] = tokens
        if violations:
            raise (TooLarge if too_large else InvalidInput)(sorted(violations, key=_violation_order))
        if other is not None:
            raise other
        return [counted[index] for index, _ in documents]

    def _share(self, worker: WorkerProcess) -> WorkerShare:
        share = self.shares.get(worker.index)
        if share is None:
            share = WorkerShare(worker, asyncio.get_running_loop().create_future())
            self.shares[worker.index] = share
            self.pool.open(self, share)
        return share

    def close(self) -> None:
        self.closed = True
        for share in self.shares.values():
            if not share.closed and not share.done:
                share.closed = True
                self.pool.send(share.worker, ipc.CloseJob(self.id))
        self._events.put(None)

    def cancel(self) -> None:
        self.cancelled = True
        for share in self.shares.values():
            if not share.done:
                self.pool.send(share.worker, ipc.CancelJob(self.id))
        self.pool.forget(self)

    def fail(self, error: BaseException) -> None:
        self._events.put(error)

    def results(self) -> AsyncIterator[Score]:
        return each_score(self.result_batches())

    async def result_batches(self) -> AsyncIterator[list[Score]]:
        while True:
            if self.closed and all(share.done for share in self.shares.values()) and self._events.empty():
                self.pool.forget(self)
                return
            scores: list[Score] = []
            for event in await self._events.get_all():
                if isinstance(event, BaseException):
                    self.pool.forget(self)
                    if scores:  # what arrived before the error is still answered first
                        yield scores
                    raise event
                if event is not None:
                    scores.append(event)
            if scores:
                yield scores


def _add_usage(total: Usage, part: Usage) -> None:
    total.prompt_tokens += part.prompt_tokens
    total.computed_tokens += part.computed_tokens
    total.images += part.images
    total.cached_images += part.cached_images


def _violation_order(violation: FieldViolation) -> tuple[int, int, str]:
    path = violation.field
    if path.startswith("documents["):
        return (1, int(path[len("documents["): path.index("]")]), path)
    return (0, 0, path)
