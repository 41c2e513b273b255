"""One queue for the documents of every request; one worker that owns the GPU.

Requests (jobs) put prepared documents into a shared queue. The worker takes them in arrival
order into batches bounded by tokens, documents and images (waiting at most `max_wait_ms` for
a batch to fill), drops the documents of cancelled or expired jobs before they reach the
model, computes each new job's shared prefix once, scores the batch on a dedicated thread, and
hands each score back to its job. A batch that runs out of GPU memory is split and retried.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import torch

from .errors import DeadlineExpired, FieldViolation, NotReady, Overloaded, TooLarge
from .executor import BatchItem, Executor, PrefixKV
from .prepare import PreparedDocument, PreparedQuery
from .types import RequestStats, Score

log = logging.getLogger(__name__)


@dataclass(eq=False)
class Job:
    """The documents of one RPC, their results, and the request's shared prefix."""

    query: PreparedQuery
    deadline: float | None  # time.monotonic() value
    created: float = field(default_factory=time.perf_counter)
    stats: RequestStats = field(default_factory=RequestStats)
    prefix_kv: PrefixKV | None = None
    cancelled: bool = False
    closed: bool = False  # no more documents will be added
    next_index: int = 0
    outstanding: int = 0
    error: Exception | None = None
    _results: asyncio.Queue = field(default_factory=asyncio.Queue)
    _batches_seen: set = field(default_factory=set)

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

    async def results(self):
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


@dataclass(eq=False)
class _Item:
    job: Job
    doc: PreparedDocument
    enqueued: float
    tokens: int


class Scheduler:
    def __init__(
        self,
        executor: Executor,
        max_batch_tokens: int,
        max_batch_documents: int,
        max_batch_images: int,
        max_wait_ms: float,
        max_queue_documents: int,
    ):
        self.executor = executor
        self.max_batch_tokens = max_batch_tokens
        self.max_batch_documents = max_batch_documents
        self.max_batch_images = max_batch_images
        self.max_wait = max_wait_ms / 1e3
        self.max_queue_documents = max_queue_documents
        self._queue: deque[_Item] = deque()
        self._wakeup = asyncio.Event()
        self._gpu = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lychee-gpu")
        self._task: asyncio.Task | None = None
        self._batch_id = 0
        self.preparing = 0  # calls between validation and submit: more work is on its way
        # Why the worker died (it never stops on its own): nothing can be scored any more.
        self.failure: BaseException | None = None
        self._on_death: list[Callable[[BaseException], None]] = []
        self._current: list[_Item] = []  # the batch being scored
        # Counters (read by tests and model info).
        self.documents_scored = 0
        self.documents_dropped = 0
        self.batches = 0
        self.oom_splits = 0
        self.busy_seconds = 0.0

    @property
    def queued(self) -> int:
        return len(self._queue)

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._loop(), name="lychee-scheduler")
            self._task.add_done_callback(self._ended)

    def on_death(self, callback: Callable[[BaseException], None]) -> None:
        """`callback(error)` once the worker has died (at once if it already has)."""
        self._on_death.append(callback)
        if self.failure is not None:
            callback(self.failure)

    def _ended(self, task: asyncio.Task) -> None:
        if task.cancelled():  # stop()
            return
        self.failure = task.exception() or RuntimeError("the scheduler's worker returned")
        log.error("the scheduler's worker died; no document can be scored any more", exc_info=self.failure)
        # Nobody would deliver these: their callers get UNAVAILABLE instead of waiting forever.
        error = NotReady("the engine stopped serving; retry on another replica")
        for item in self._queue:
            item.job.outstanding -= 1
            item.job.fail(error)
        for item in self._current:  # some may have been delivered already: their counts are settled
            item.job.fail(error)
        self._queue.clear()
        self._current = []
        for callback in self._on_death:
            callback(self.failure)

    async def stop(self) -> None:
        if self._task is not None:
            if not self._task.done():  # a dead worker has nothing to cancel (its error is in `failure`)
                self._task.cancel()
                try:
                    await self._task
                except asyncio.CancelledError:
                    pass
            self._task = None
        self._gpu.shutdown(wait=True)

    def submit(self, job: Job, docs: list[PreparedDocument]) -> None:
        if self.failure is not None:
            raise NotReady("the engine stopped serving; retry on another replica")
        if len(self._queue) + len(docs) > self.max_queue_documents:
            raise Overloaded(
                f"queue is full ({len(self._queue)} documents waiting, limit {self.max_queue_documents}); retry later",
                retry_after=self.drain_seconds(len(docs)),
            )
        now = time.perf_counter()
        job.outstanding += len(docs)
        for doc in docs:
            self._queue.append(_Item(job, doc, now, len(doc.segment)))
        self._wakeup.set()

    def drain_seconds(self, extra_documents: int = 0) -> float:
        """How long the queue (plus `extra_documents`) takes to drain at the measured rate: the
        delay an overloaded caller is told to wait. 1 s until a batch has been measured."""
        if self.busy_seconds <= 0 or self.documents_scored == 0:
            return 1.0
        rate = self.documents_scored / self.busy_seconds
        return min(60.0, max(0.1, (len(self._queue) + extra_documents) / rate))

    def submit_to_gpu(self, fn: Callable, *args) -> Future:
        """Runs fn on the GPU thread, in order with the batches; callable from any thread."""
        return self._gpu.submit(fn, *args)

    async def run_on_gpu(self, fn: Callable, *args):
        return await asyncio.get_running_loop().run_in_executor(self._gpu, guarded, fn, *args)

    # ---- the worker ---------------------------------------------------------------------
    async def _next_batch(self) -> list[_Item]:
        batch: list[_Item] = []
        budget = [0, 0]  # tokens, images
        while not batch:
            while not self._queue:
                self._wakeup.clear()
                await self._wakeup.wait()
            deadline = time.perf_counter() + self.max_wait
            while True:
                if self._fill(batch, budget):
                    return batch
                remaining = deadline - time.perf_counter()
                # Waiting only helps while another call is about to submit documents.
                if remaining <= 0 or not batch or self.preparing == 0:
                    break
                self._wakeup.clear()
                try:
                    await asyncio.wait_for(self._wakeup.wait(), remaining)
                except TimeoutError:
                    break
        return batch

    def _fill(self, batch: list[_Item], budget: list[int]) -> bool:
        """Moves queued documents into `batch` while they fit; True when the batch is full."""
        while self._queue:
            if len(batch) >= self.max_batch_documents:
                return True
            item = self._queue[0]
            item_images = len(item.doc.segment.images)
            if batch and (
                budget[0] + item.tokens > self.max_batch_tokens
                or budget[1] + item_images > self.max_batch_images
            ):
                return True
            self._queue.popleft()
            if not item.job.alive():
                self._drop(item)
                continue
            batch.append(item)
            budget[0] += item.tokens
            budget[1] += item_images
        return len(batch) >= self.max_batch_documents

    def _drop(self, item: _Item) -> None:
        self.documents_dropped += 1
        job = item.job
        job.outstanding -= 1
        if job.expired() and not job.cancelled:
            job.fail(DeadlineExpired("deadline expired before the documents were scored"))
        job.release_if_done()

    async def _loop(self) -> None:
        while True:
            # No local keeps the batch (and so its jobs) alive while waiting for the next one.
            self._current = await self._next_batch()
            await self._process(self._current)
            self._current = []

    async def _process(self, batch: list[_Item]) -> None:
        start = time.perf_counter()
        self._batch_id += 1
        try:
            logits = await self.run_on_gpu(self._run_batch, batch)
        except Exception as exc:  # one batch failing never stops the worker
            # An unexpected error is a fault, never overload: it reaches the caller as INTERNAL.
            log.exception("batch of %d documents failed", len(batch))
            for item in batch:
                item.job.outstanding -= 1
                item.job.fail(exc)
            return
        elapsed = time.perf_counter() - start
        self.busy_seconds += elapsed
        self.batches += 1
        for item, logit in zip(batch, logits):
            job = item.job
            if self._batch_id not in job._batches_seen:
                job._batches_seen.add(self._batch_id)
                job.stats.timings.inference_ms += elapsed * 1e3
            job.stats.timings.queue_ms = max(job.stats.timings.queue_ms, (start - item.enqueued) * 1e3)
            if not isinstance(logit, float) or not job.alive():
                job.outstanding -= 1
                if isinstance(logit, Exception):
                    job.fail(logit)
                job.release_if_done()
                continue
            self.documents_scored += 1
            job.deliver(Score(item.doc.index, item.doc.id, _sigmoid(logit), logit))

    # ---- on the GPU thread --------------------------------------------------------------
    def _run_batch(self, batch: list[_Item]) -> list[float | Exception | None]:
        out: list[float | Exception | None] = [None] * len(batch)
        self._score(batch, [k for k, i in enumerate(batch) if i.job.alive()], out, inline_prefixes=True)
        return out

    def _score(self, batch: list[_Item], todo: list[int], out: list, inline_prefixes: bool) -> None:
        """Scores batch[k] for k in todo into out[k]. A request's prefix that has not run yet
        runs in the same pass as its first documents (inline); on OOM the prefixes run alone
        first and the documents are split in halves until they fit."""
        if not todo:
            return
        items: list[BatchItem] = []
        inline: dict[Job, int] = {}  # job -> index of its prefix item in this pass
        for k in todo:
            job = batch[k].job
            if batch[k].doc.uses_prefix and job.prefix_kv is None and job not in inline:
                if not inline_prefixes:
                    try:
                        job.prefix_kv = self.executor.prefill(job.query.prefix)
                    except torch.OutOfMemoryError:
                        _free_cuda()
                        out[k] = TooLarge([FieldViolation("query", "the query is too large for the GPU memory left")])
                        continue
                    job.stats.usage.computed_tokens += len(job.query.prefix)
                    continue
                inline[job] = len(items)
                items.append(BatchItem(job.query.prefix, None, score=False, keep_kv=True))
        todo = [k for k in todo if out[k] is None]
        for k in todo:
            doc, job = batch[k].doc, batch[k].job
            context = (job.prefix_kv if job.prefix_kv is not None else inline[job]) if doc.uses_prefix else None
            items.append(BatchItem(doc.segment, context))
        try:
            logits, kept = self.executor.run(items)
        except torch.OutOfMemoryError:
            _free_cuda()
            if inline:
                self._score(batch, todo, out, inline_prefixes=False)
            elif len(todo) == 1:
                out[todo[0]] = TooLarge([FieldViolation(
                    f"documents[{batch[todo[0]].doc.index}]", "the document is too large for the GPU memory left")])
            else:
                self.oom_splits += 1
                half = len(todo) // 2
                self._score(batch, todo[:half], out, False)
                self._score(batch, todo[half:], out, False)
            return
        for job, index in inline.items():
            job.prefix_kv = kept[index]
            job.stats.usage.computed_tokens += len(job.query.prefix)
        for k, value in zip(todo, logits.tolist()):
            out[k] = value
            batch[k].job.stats.usage.computed_tokens += batch[k].tokens


def guarded(fn: Callable, *args):
    """fn(*args) for `run_in_executor`: a StopIteration escaping fn becomes a RuntimeError. asyncio
    cannot set StopIteration on a future (it logs a TypeError and leaves the future pending), so
    the awaiting request would wait forever instead of failing."""
    try:
        return fn(*args)
    except StopIteration as exc:
        raise RuntimeError(f"{getattr(fn, '__qualname__', fn)} raised StopIteration") from exc


def _sigmoid(x: float) -> float:
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    e = math.exp(x)
    return e / (1.0 + e)


def _free_cuda() -> None:
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
