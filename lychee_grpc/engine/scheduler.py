"""One queue for the documents of every request; one worker that owns the GPU.

Requests (jobs) put prepared documents into a shared queue. The worker takes them in arrival
order into batches bounded by tokens, documents and images (waiting at most `max_wait_ms` for
a batch to fill), drops the documents of cancelled or expired jobs before they reach the
model, computes each new job's shared prefix once, scores the batch on a dedicated thread, and
hands each score back to its job. A batch that runs out of GPU memory is split and retried; a
document that runs out of memory alone is tried once more, alone on a drained GPU, before it is
refused.

Two batches overlap: the next is laid out and launched on the GPU thread while the previous one
still runs, and only then are the previous one's scores read (off the event loop; their copy to
the host is queued behind its own kernels). So the GPU does not idle while the host prepares a
batch. Scores already made (with nothing queued, or on the CPU, where a launch computes them) are
delivered before the next batch is launched.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch

from .errors import DeadlineExpired, EngineError, FieldViolation, NotReady, Overloaded, TooLarge
from .faults import FaultHook, NoFaults
from .heads import MIN_HEAD, MIN_NESTED_HEAD, common_head, shared_heads, split
from .job import Job
from .lm.executor import BatchItem, Executor, PrefixKV
from .prompt.prepared import PreparedDocument, Segment
from .stats import CANCELLED, DEADLINE, StatsRecorder
from .types import Score
from .util.device_copy import Readback

log = logging.getLogger(__name__)


@dataclass(eq=False)
class QueuedDocument:
    job: Job
    doc: PreparedDocument
    enqueued: float
    tokens: int
    retried: bool = False  # ran out of memory alone once: its next batch runs on a drained GPU


class _ShortOfMemory(Exception):
    """A document (or its request's query, by `field`) ran out of GPU memory in a pass of its own."""

    def __init__(self, field: str, tokens: int):
        self.field, self.tokens = field, tokens
        super().__init__(f"{field}: out of GPU memory alone ({tokens} tokens)")


def drain_seconds(queued: int, extra: int, done: int, seconds: float) -> float:
    """How long `queued` units of work (documents or tokens) plus `extra` take to drain at the
    measured rate (`done` units in `seconds`): the delay an overloaded caller is told to wait,
    within [0.1, 60] s; 1 s until something has been measured."""
    if seconds <= 0 or done <= 0:
        return 1.0
    return min(60.0, max(0.1, (queued + extra) * seconds / done))


class Scheduler:
    def __init__(
        self,
        executor: Executor,
        max_batch_tokens: int,
        max_batch_documents: int,
        max_batch_images: int,
        max_wait_ms: float,
        max_queue_documents: int,
        recorder: StatsRecorder | None = None,
        max_queue_tokens: int = 0,
        faults: FaultHook | None = None,
    ):
        self.executor = executor
        self.faults: FaultHook = faults if faults is not None else NoFaults()
        self.recorder = recorder if recorder is not None else StatsRecorder()
        self.max_batch_tokens = max_batch_tokens
        self.max_batch_documents = max_batch_documents
        self.max_batch_images = max_batch_images
        self.max_wait = max_wait_ms / 1e3
        self.max_queue_documents = max_queue_documents
        self.max_queue_tokens = max_queue_tokens  # 0: no bound beyond documents
        self._queue: deque[QueuedDocument] = deque()
        self._wakeup = asyncio.Event()
        self._gpu = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lychee-gpu")
        self._task: asyncio.Task | None = None
        self._batch_id = 0
        self._preparing = 0  # calls between validation and submit: more work is on its way
        self._queued_tokens = 0
        self._tokens_scored = 0  # the drain rate in tokens/s is this over the batches' seconds
        # Why the worker died (it never stops on its own): nothing can be scored any more.
        self.failure: BaseException | None = None
        self._on_death: list[Callable[[BaseException], None]] = []
        self._current: list[list[QueuedDocument]] = []  # the batches formed and not yet settled (two at most)
        self._last_end = 0.0  # when the last batch's scores were read
        # Documents of a request that begin alike share their head (heads.py), unless that would
        # change a score's bits where the batch-invariant mode promises them.
        self._shares_heads = executor.attention.splits_exactly

    @property
    def queued(self) -> int:
        return len(self._queue)

    @property
    def queued_tokens(self) -> int:
        return self._queued_tokens

    @property
    def preparing(self) -> int:
        return self._preparing

    @contextmanager
    def expecting_documents(self) -> Iterator[None]:
        """Marks a call that is preparing documents for `submit`: a forming batch waits for it
        (up to max_wait_ms) rather than leaving with fewer documents."""
        self._preparing += 1
        try:
            yield
        finally:
            self._preparing -= 1

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
            item.job.unscored(error)
        for item in (item for batch in self._current for item in batch):  # delivered ones' counts are settled
            item.job.fail(error)
        self._queue.clear()
        self._queued_tokens = 0
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
                # The loop still holds the cancelled worker (a wake-up queued for this coroutine), and
                # with it the executor and its GPU memory, until it runs once more: bench.run's next
                # engine in the process ran out of memory beside it under a 24 GiB cap.
                await asyncio.sleep(0)
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
        tokens = sum(len(doc.segment) for doc in docs)
        if self.max_queue_tokens and self._queued_tokens + tokens > self.max_queue_tokens:
            raise Overloaded(
                f"queue is full ({self._queued_tokens} tokens waiting, limit {self.max_queue_tokens}, "
                f"this request adds {tokens}); retry later",
                retry_after=self.drain_seconds(extra_tokens=tokens),
            )
        now = time.perf_counter()
        job.queued(len(docs))
        for doc in docs:
            item = QueuedDocument(job, doc, now, len(doc.segment))
            self._queue.append(item)
            self._queued_tokens += item.tokens
        self._wakeup.set()

    def drop_unqueued(self, job: Job, count: int) -> None:
        """Records documents prepared for `job` but never queued (its deadline passed first)."""
        self.recorder.documents_dropped(count, _drop_reason(job))

    def drain_seconds(self, extra_documents: int = 0, extra_tokens: int = 0) -> float:
        """How long the queue (plus the extra work) takes to drain at the measured rate, in tokens
        per second when tokens are given, else documents: the delay an overloaded caller is told to
        wait. 1 s until a batch has been measured."""
        counters = self.recorder.counters()
        if counters.documents_scored == 0:
            return 1.0
        if extra_tokens:
            return drain_seconds(self._queued_tokens, extra_tokens, max(1, self._tokens_scored), counters.batch_seconds)
        return drain_seconds(len(self._queue), extra_documents, counters.documents_scored, counters.batch_seconds)

    def submit_to_gpu(self, fn: Callable, *args) -> Future:
        """Runs fn on the GPU thread, in order with the batches; callable from any thread."""
        return self._gpu.submit(fn, *args)

    async def run_on_gpu(self, fn: Callable, *args):
        return await asyncio.get_running_loop().run_in_executor(self._gpu, no_stop_iteration, fn, *args)

    # ---- the worker ---------------------------------------------------------------------
    async def _next_batch(self, wait: bool = True) -> list[QueuedDocument]:
        """The next batch; with `wait` false, an empty one rather than waiting for work to arrive."""
        batch: list[QueuedDocument] = []
        budget = _Budget()
        while not batch:
            while not self._queue:
                if not wait:
                    return batch
                self._wakeup.clear()
                await self._wakeup.wait()
            deadline = time.perf_counter() + self.max_wait
            while True:
                if self._fill(batch, budget):
                    return batch
                remaining = deadline - time.perf_counter()
                # Waiting only helps while another call is about to submit documents.
                if remaining <= 0 or not batch or self._preparing == 0:
                    break
                self._wakeup.clear()
                try:
                    await asyncio.wait_for(self._wakeup.wait(), remaining)
                except TimeoutError:
                    break
        return batch

    def _fill(self, batch: list[QueuedDocument], budget: _Budget) -> bool:
        """Moves queued documents into `batch` while they fit; True when the batch is full."""
        while self._queue:
            if len(batch) >= self.max_batch_documents:
                return True
            item = self._queue[0]
            item_images = len(item.doc.segment.images)
            # A document's tokens past the head it shares with its request's previous document
            # here: Explain's variants of a 17k-token document fit one batch of ~8k rows.
            previous = budget.last.get(item.job)
            rows = item.tokens
            if previous is not None and previous.uses_prefix == item.doc.uses_prefix and self._shares_heads:
                rows -= common_head(previous.segment, item.doc.segment, self.executor.image_token_id)
            if batch and (
                budget.rows + rows > self.max_batch_tokens
                or budget.images + item_images > self.max_batch_images
            ):
                return True
            self._queue.popleft()
            self._queued_tokens -= item.tokens
            if not item.job.alive():
                self._drop(item)
                continue
            batch.append(item)
            budget.rows += rows
            budget.images += item_images
            budget.last[item.job] = item.doc
        return len(batch) >= self.max_batch_documents

    def _drop(self, item: QueuedDocument) -> None:
        job = item.job
        self.recorder.documents_dropped(1, _drop_reason(job))
        expired = job.expired() and not job.cancelled
        job.unscored(DeadlineExpired("deadline expired before the documents were scored") if expired else None)

    async def _loop(self) -> None:
        previous: _Launched | None = None
        while True:
            # With a batch in flight, an empty queue means: read that batch now, not later.
            batch = await self._next_batch(wait=previous is None)
            if not batch:
                assert previous is not None  # only then does _next_batch return empty
                await self._complete(previous)
                previous = None
                continue
            self._current.append(batch)  # from here the batch is the worker's to settle, even if it dies
            self.faults.batch_formed(len(batch))
            retrying = any(item.retried for item in batch)
            if previous is not None and (not previous.pending or retrying):
                # Its scores are ready (on the CPU they are at launch): deliver them before the
                # next batch runs, not after. A document that ran out of memory alone runs again
                # on a GPU that holds no other batch.
                await self._complete(previous)
                previous = None
            # Otherwise the next batch is laid out and launched while the previous one still runs
            # on the GPU: the GPU never idles for the host work between batches (C8: bench/RESULTS.md).
            launched = await self._launch(batch, drained=retrying)
            del batch  # no local keeps a batch (and so its jobs) alive while waiting for the next
            if previous is not None:
                await self._complete(previous)
            previous = launched
            del launched

    async def _launch(self, batch: list[QueuedDocument], drained: bool = False) -> _Launched | None:
        start = time.perf_counter()
        self._batch_id += 1
        for item in batch:
            self.recorder.queue_wait(start - item.enqueued)
        try:
            return await self.run_on_gpu(self._launch_batch, batch, self._batch_id, start, drained)
        except Exception as exc:  # one batch failing never stops the worker
            self._failed(batch, exc)
            return None

    def _failed(self, batch: list[QueuedDocument], exc: Exception) -> None:
        # An unexpected error is a fault, never overload: it reaches the caller as INTERNAL.
        log.error("batch of %d documents failed", len(batch), exc_info=exc)
        for item in batch:
            item.job.unscored(exc)
        self._settled(batch)

    def _settled(self, batch: list[QueuedDocument]) -> None:
        self._current = [formed for formed in self._current if formed is not batch]

    async def _complete(self, launched: _Launched | None) -> None:
        """Reads a launched batch's scores (waiting for the GPU off the event loop) and delivers them."""
        if launched is None:  # its launch failed: already settled
            return
        batch = launched.batch
        try:
            if launched.pending:
                await asyncio.get_running_loop().run_in_executor(None, launched.wait)
            else:
                launched.wait()
        except Exception as exc:  # an error the GPU reports late (an asynchronous CUDA fault)
            self._failed(batch, exc)
            return
        end = time.perf_counter()
        # The GPU's time on this batch alone: from its launch, or from the end of the batch before
        # it when that one was still running (the drain rate sums these).
        elapsed = end - max(launched.start, self._last_end)
        self._last_end = end
        out, extra_tokens = launched.out, launched.extra
        scored = tokens = images = saved = 0
        again: list[QueuedDocument] = []
        refused: list[str] = []
        for item, logit in zip(batch, out):
            job = item.job
            job.in_batch(launched.batch_id, launched.start, elapsed)
            job.waited(launched.start - item.enqueued)
            if isinstance(logit, _ShortOfMemory):
                if not job.alive():
                    logit = None  # dropped as every document of a job that ended
                elif not item.retried:  # the shortage may be another batch's, or the allocator's fragments
                    item.retried = True
                    again.append(item)
                    continue
                else:
                    logit = self._memory_refusal(logit)
                    refused.append(str(logit))
            if not isinstance(logit, float) or not job.alive():
                if not isinstance(logit, Exception):
                    self.recorder.documents_dropped(1, _drop_reason(job))
                job.unscored(logit if isinstance(logit, Exception) else None)
                continue
            scored += 1
            tokens += item.tokens
            images += len(item.doc.segment.images)
            saved += item.doc.prompt_tokens - item.tokens
            job.deliver(Score(item.doc.index, item.doc.id, _sigmoid(logit), logit, truncated=item.doc.truncated))
        self._settled(batch)
        if again or refused:
            self.recorder.oom_alone(len(again), len(refused))
        if refused:
            log.warning("%d document(s) refused after running out of GPU memory alone twice, the second time on a "
                        "drained GPU; the first: %s", len(refused), refused[0])
        if again:
            log.warning("%d document(s) ran out of GPU memory in a pass of their own; trying them once more "
                        "after the batch before them", len(again))
            self._queue.extendleft(reversed(again))
            self._queued_tokens += sum(item.tokens for item in again)
            self._wakeup.set()
        self._tokens_scored += tokens
        self.recorder.batch_done(scored, tokens, images, elapsed)
        if saved - extra_tokens > 0:
            self.recorder.prefix_saved(saved - extra_tokens)

    def _memory_refusal(self, short: _ShortOfMemory) -> EngineError:
        """The error for what ran out of memory alone twice, the second time on a drained GPU.
        Over a batch's token bound it is too large for this server; within it, a batch that size
        is what the server is set up to hold, so the shortage is the server's state, and a retry
        (or another replica) can succeed."""
        what = "the query" if short.field == "query" else "the document"
        bound = self.max_batch_tokens
        if short.tokens > bound:
            reason = f"{what} is too large for the GPU memory left ({short.tokens} tokens; a batch holds {bound})"
            return TooLarge([FieldViolation(short.field, reason)])
        return Overloaded(f"{short.field}: the GPU memory left cannot hold {what} now ({short.tokens} tokens, "
                          f"within a batch's {bound}); retry later", retry_after=self.drain_seconds())

    # ---- on the GPU thread --------------------------------------------------------------
    def _launch_batch(self, batch: list[QueuedDocument], batch_id: int, start: float,
                      drained: bool = False) -> _Launched:
        """The batch on its way: its passes launched (their scores still on the GPU), the errors
        of documents that could not run, and the tokens computed beyond the documents' own.
        `drained`: no other batch is on the GPU (one of its documents ran out of memory alone)."""
        if drained:
            _free_cuda()  # the blocks the batches before it left cached
        launched = _Launched(batch, batch_id, start, [None] * len(batch))
        extra: list[int] = []
        self._score(batch, [k for k, i in enumerate(batch) if i.job.alive()], launched, True, extra)
        launched.extra = sum(extra)
        return launched

    def _score(self, batch: list[QueuedDocument], pending: list[int], launched: _Launched,
               inline_prefixes: bool, extra: list[int]) -> None:
        """Launches the scoring of batch[k] for k in pending (its score lands in launched.out[k]
        once read back). A request's prefix that has not run yet
        runs in the same pass as its first documents (inline); on OOM the prefixes run alone
        first and the documents are split in halves until they fit. Documents of a request that
        begin alike share their head (heads.py). `extra` gets the tokens computed beyond the
        documents' own: a prefix's, less what each shared head saved."""
        if not pending:
            return
        out = launched.out
        items: list[BatchItem] = []
        inline: dict[Job, int] = {}  # job -> index of its prefix item in this pass
        for k in pending:
            job = batch[k].job
            if batch[k].doc.uses_prefix and job.prefix_kv is None and job not in inline:
                if not inline_prefixes:
                    try:
                        job.prefix_kv = self.executor.prefill(job.query.prefix)
                    except torch.OutOfMemoryError:
                        _free_cuda()
                        out[k] = _ShortOfMemory("query", len(job.query.prefix))
                        continue
                    job.computed(len(job.query.prefix))
                    extra.append(len(job.query.prefix))
                    continue
                inline[job] = len(items)
                items.append(BatchItem(job.query.prefix, None, score=False, keep_kv=True))
        pending = [k for k in pending if out[k] is None]
        contexts: dict[int, PrefixKV | int | None] = {}
        for k in pending:
            doc, job = batch[k].doc, batch[k].job
            contexts[k] = (job.prefix_kv if job.prefix_kv is not None else inline[job]) if doc.uses_prefix else None
        segments = {k: batch[k].doc.segment for k in pending}
        heads = self._share_heads(batch, pending, contexts, segments, items)
        items += [BatchItem(segments[k], contexts[k]) for k in pending]
        try:
            self.faults.model_call(items)
            scores, kept_kv = self.executor.launch(items)
        except torch.OutOfMemoryError:
            _free_cuda()
            if inline:
                self._score(batch, pending, launched, False, extra)
            elif len(pending) == 1:
                item = batch[pending[0]]
                out[pending[0]] = _ShortOfMemory(f"documents[{item.doc.index}]", item.tokens)
            else:
                self.recorder.oom_split()
                half = len(pending) // 2
                self._score(batch, pending[:half], launched, False, extra)
                self._score(batch, pending[half:], launched, False, extra)
            return
        for job, index in inline.items():
            job.prefix_kv = kept_kv[index]
            job.computed(len(job.query.prefix))
            extra.append(len(job.query.prefix))
        for job, tokens, members in heads:
            job.computed(tokens)
            extra.append(-(members - 1) * tokens)
        for k in pending:
            batch[k].job.computed(len(segments[k]))
        launched.passes.append((pending, scores))

    def _share_heads(self, batch: list[QueuedDocument], pending: list[int], contexts: dict[int, PrefixKV | int | None],
                     segments: dict[int, Segment], items: list[BatchItem]) -> list[tuple[Job, int, int]]:
        """Appends one unscored item per head that documents of one request share (heads.py) and
        makes those documents' `segments` their tails and their `contexts` that item. Returns
        (job, head tokens, documents sharing it) per head."""
        if not self._shares_heads:
            return []
        image_token_id = self.executor.image_token_id
        groups: dict[tuple[int, bool], list[int]] = {}
        for k in pending:
            groups.setdefault((id(batch[k].job), batch[k].doc.uses_prefix), []).append(k)
        out: list[tuple[Job, int, int]] = []
        # The rests of a head's documents read one context, that head: they may share a head in
        # turn (Explain's word variants removing later words share the words before them).
        todo = [(ks, MIN_HEAD) for ks in groups.values()]
        while todo:
            ks, min_head = todo.pop()
            for shared in shared_heads([segments[k] for k in ks], image_token_id, min_head):
                members = [ks[m] for m in shared.members]
                head = None
                for k in members:
                    head, segments[k] = split(segments[k], shared.length, image_token_id)
                assert head is not None  # a group has two members or more
                items.append(BatchItem(head, contexts[members[0]], score=False))
                for k in members:
                    contexts[k] = len(items) - 1
                out.append((batch[members[0]].job, shared.length, len(members)))
                todo.append((members, MIN_NESTED_HEAD))
        return out


@dataclass
class _Launched:
    """A batch whose passes are on the GPU: out[k] is batch[k]'s logit once read back (or an
    error, or None where it did not run)."""

    batch: list[QueuedDocument]
    batch_id: int
    start: float
    out: list[float | Exception | None]
    passes: list[tuple[list[int], Readback]] = field(default_factory=list)
    extra: int = 0

    @property
    def pending(self) -> bool:
        return any(scores.pending for _, scores in self.passes)

    def wait(self) -> None:
        """Reads every pass's scores into `out` (blocks until the GPU has made them)."""
        for ks, scores in self.passes:
            for k, value in zip(ks, scores.wait().tolist()):
                self.out[k] = value
        self.passes = []


@dataclass
class _Budget:
    """What a forming batch holds: rows to compute, images, and each request's last document."""

    rows: int = 0
    images: int = 0
    last: dict[Job, PreparedDocument] = field(default_factory=dict)


def _drop_reason(job: Job) -> str:
    return DEADLINE if job.expired() and not job.cancelled else CANCELLED


def no_stop_iteration(fn: Callable, *args):
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
