"""WorkerPool: one engine worker process per device behind one EngineClient.

Each request's documents go to the worker with the fewest queued tokens; a large request is
spread evenly over several workers so it finishes sooner (`routing.Router`: documents sharing an
image stay together, and an image keeps going to the worker it went to while loads allow, for its
vision cache); each worker computes the query prefix for the documents it runs. Cancellation
and deadlines travel with the job. A worker that dies fails its requests with UNAVAILABLE and
calls `on_failure`, which turns the server NOT_SERVING and makes the process exit non-zero so the
orchestrator restarts it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import logging
import multiprocessing
import os
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field

from ..engine.errors import FieldViolation, InvalidInput, ModelLoadError, NotReady, TooLarge
from ..engine.types import Document, Query, RequestStats, Score
from . import ipc, worker
from .routing import Router, guess_tokens

log = logging.getLogger(__name__)

STOP_SECONDS = 30.0


def parse_devices(spec: str) -> list[str]:
    """'cuda:0,cuda:1' -> that list; 'all' -> every visible CUDA device."""
    if spec.strip() == "all":
        import torch

        count = torch.cuda.device_count()
        if count == 0:
            raise ModelLoadError("--devices all: no CUDA device is visible")
        return [f"cuda:{i}" for i in range(count)]
    devices = [d.strip() for d in spec.split(",") if d.strip()]
    for device in devices:
        if device != "cpu" and not (device.startswith("cuda:") and device[5:].isdigit()):
            raise ModelLoadError(f"--devices: {device!r} is not cpu or cuda:N")
    cuda = [d for d in devices if d != "cpu"]
    if len(set(cuda)) != len(cuda):
        raise ModelLoadError("--devices: a GPU is listed twice (one worker per GPU)")
    return devices


@dataclass(eq=False)
class _Worker:
    index: int
    device: str
    label: str  # the device, or cpu:<index> for CPU workers (tests run two on one CPU)
    process: multiprocessing.process.BaseProcess
    conn: object
    alive: bool = True
    queued_tokens: int = 0
    info: object = None
    stats: object = None
    ready: asyncio.Future | None = None


@dataclass(eq=False)
class _Part:
    """A request's documents on one worker."""

    worker: _Worker
    opened: asyncio.Future
    global_index: list[int] = field(default_factory=list)  # worker-local index -> request index
    tokens: list[int] = field(default_factory=list)  # worker-local index -> tokens queued
    adds: dict[int, asyncio.Future] = field(default_factory=dict)
    done: bool = False
    closed: bool = False


class PoolJob:
    def __init__(self, pool: WorkerPool, job_id: int, query: Query, instruction: str, deadline: float | None,
                 truncate: bool = False, max_tokens: int = 0):
        self.pool = pool
        self.truncate = truncate
        self.max_tokens = max_tokens
        self.id = job_id
        self.query = query
        self.instruction = instruction
        self.deadline = deadline
        self.stats = RequestStats()
        self.next_index = 0
        self.parts: dict[int, _Part] = {}
        self.closed = False
        self.cancelled = False
        self._events: asyncio.Queue = asyncio.Queue()
        self._seq = itertools.count()

    # ---- from the pool's message loop ---------------------------------------------------
    def on_scored(self, part: _Part, score: Score) -> None:
        index = part.global_index[score.index]
        part.worker.queued_tokens -= part.tokens[score.index]
        part.tokens[score.index] = 0
        self._events.put_nowait(dataclasses.replace(score, index=index))

    def on_done(self, part: _Part, stats: RequestStats, error: ipc.WireError | None) -> None:
        part.done = True
        part.worker.queued_tokens -= sum(part.tokens)
        part.tokens = [0] * len(part.tokens)
        usage, timings = self.stats.usage, self.stats.timings
        for name in ("prompt_tokens", "computed_tokens", "images", "cached_images"):
            setattr(usage, name, getattr(usage, name) + getattr(stats.usage, name))
        timings.preprocess_ms = max(timings.preprocess_ms, stats.timings.preprocess_ms)
        timings.queue_ms = max(timings.queue_ms, stats.timings.queue_ms)
        timings.inference_ms = max(timings.inference_ms, stats.timings.inference_ms)
        for future in part.adds.values():
            if not future.done():
                future.set_result(ipc.Added(self.id, -1, error=error or ipc.WireError("Cancelled", "job ended")))
        if error is not None:
            self.fail(error.rebuild(dict(enumerate(part.global_index))))
        self._events.put_nowait(None)

    def on_worker_died(self, part: _Part, reason: str) -> None:
        error = NotReady(f"{reason}; retry")
        for future in [part.opened, *part.adds.values()]:
            if not future.done():
                future.set_exception(error)
        part.done = True
        self.fail(error)
        self._events.put_nowait(None)

    # ---- JobHandle ----------------------------------------------------------------------
    async def add_documents(self, documents: Sequence[Document]) -> None:
        limit = self.pool.max_documents
        if self.next_index + len(documents) > limit:
            count = self.next_index + len(documents)
            raise TooLarge([FieldViolation("documents", f"{count} documents, over the limit of {limit}")])
        first = self.next_index
        self.next_index += len(documents)
        assignment = self.pool.assign([(first + k, doc) for k, doc in enumerate(documents)])
        waits = []
        for w, items in assignment.items():
            part = self._part(w)
            seq = next(self._seq)
            future = asyncio.get_running_loop().create_future()
            part.adds[seq] = future
            part.global_index.extend(i for i, _ in items)
            part.tokens.extend(guess_tokens(doc) for _, doc in items)
            w.queued_tokens += sum(part.tokens[-len(items):])
            self.pool.send(w, ipc.AddDocuments(self.id, seq, [doc for _, doc in items]))
            waits.append((part, seq, len(part.global_index) - len(items), future))
        violations: list[FieldViolation] = []
        other: BaseException | None = None
        for part, seq, start, future in waits:
            await part.opened
            added: ipc.Added = await future
            part.adds.pop(seq, None)
            if added.error is not None:
                exc = added.error.rebuild(dict(enumerate(part.global_index)))
                if isinstance(exc, InvalidInput):
                    violations.extend(exc.violations)
                else:
                    other = other or exc
                continue
            for k, tokens in enumerate(added.tokens):  # the worker's count replaces the guess
                part.worker.queued_tokens += tokens - part.tokens[start + k]
                part.tokens[start + k] = tokens
        if violations:
            too_large = all(v.field == "documents" for v in violations)
            raise (TooLarge if too_large else InvalidInput)(sorted(violations, key=_violation_order))
        if other is not None:
            raise other

    def _part(self, w: _Worker) -> _Part:
        part = self.parts.get(w.index)
        if part is None:
            part = _Part(w, asyncio.get_running_loop().create_future())
            self.parts[w.index] = part
            self.pool.open(self, part)
        return part

    def close(self) -> None:
        self.closed = True
        for part in self.parts.values():
            if not part.closed and not part.done:
                part.closed = True
                self.pool.send(part.worker, ipc.CloseJob(self.id))
        self._events.put_nowait(None)

    def cancel(self) -> None:
        self.cancelled = True
        for part in self.parts.values():
            if not part.done:
                self.pool.send(part.worker, ipc.CancelJob(self.id))
        self.pool.forget(self)

    def fail(self, error: BaseException) -> None:
        self._events.put_nowait(error)

    async def results(self) -> AsyncIterator[Score]:
        while True:
            if self.closed and all(p.done for p in self.parts.values()) and self._events.empty():
                self.pool.forget(self)
                return
            event = await self._events.get()
            if isinstance(event, BaseException):
                self.pool.forget(self)
                raise event
            if event is not None:
                yield event


def _violation_order(v: FieldViolation) -> tuple:
    if v.field.startswith("documents["):
        return (1, int(v.field[len("documents["): v.field.index("]")]), v.field)
    return (0, 0, v.field)


class WorkerPool:
    """EngineClient over one worker process per device."""

    def __init__(
        self,
        engine_config,
        devices: list[str],
        on_failure: Callable[[str], None] | None = None,
        observer_for: Callable[[str], object] | None = None,
        split_min_documents: int = 16,
        log_level: str = "INFO",
        engine_factory: Callable | None = None,
    ):
        self.engine_config = engine_config
        self.devices = devices
        self.on_failure = on_failure
        self.observer_for = observer_for
        self.router = Router(split_min_documents)
        self.log_level = log_level
        self.engine_factory = engine_factory  # picklable: it crosses to each worker process
        self._workers: list[_Worker] = []
        self._jobs: dict[int, PoolJob] = {}
        self._ids = itertools.count(1)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping = False
        self.max_documents = engine_config.max_documents_per_request
        self.routed: Counter[str] = Counter()  # documents sent to each worker, by label

    @property
    def workers(self) -> int:
        return len(self.devices)

    @property
    def ready(self) -> bool:
        return bool(self._workers) and all(w.alive and w.info is not None for w in self._workers)

    # ---- lifecycle ----------------------------------------------------------------------
    def worker_config(self, device: str):
        """The engine config of the worker on `device`. Unless set, each worker gets cores / (2 x
        workers) torch threads: every worker taking one per core made the two H200 workers' LM
        passes for T100 ~60% slower (their idle threads spin while another process launches)."""
        config = self.engine_config
        if not device.startswith("cuda:"):
            config = dataclasses.replace(config, device=device)
        if config.torch_threads is None and len(self.devices) > 1:
            cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
            config = dataclasses.replace(config, torch_threads=max(1, cores // (2 * len(self.devices))))
        return config

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        context = multiprocessing.get_context("spawn")
        for index, device in enumerate(self.devices):
            parent, child = context.Pipe(duplex=True)
            cuda = int(device.split(":")[1]) if device.startswith("cuda:") else None
            config = self.worker_config(device)
            process = context.Process(
                target=worker.main, args=(child, config, cuda, self.log_level, self.engine_factory),
                name=f"lychee-worker-{index}", daemon=True,
            )
            process.start()
            child.close()
            label = device if cuda is not None else f"cpu:{index}"
            w = _Worker(index, device, label, process, parent, ready=self._loop.create_future())
            self._workers.append(w)
            threading.Thread(target=self._read, args=(w,), name=f"lychee-pool-{index}", daemon=True).start()
        for w in self._workers:
            await w.ready
        log.info("%d engine workers ready on %s", len(self._workers), ", ".join(self.devices))

    async def stop(self) -> None:
        self._stopping = True
        for w in self._workers:
            if w.alive:
                self.send(w, ipc.Shutdown())
        deadline = time.monotonic() + STOP_SECONDS
        for w in self._workers:
            await asyncio.to_thread(w.process.join, max(0.1, deadline - time.monotonic()))
            if w.process.is_alive():
                w.process.kill()

    # ---- the pipes ----------------------------------------------------------------------
    def send(self, w: _Worker, message) -> None:
        if not w.alive:
            return
        try:
            w.conn.send(message)
        except (OSError, EOFError, BrokenPipeError):
            self._on_dead(w)

    def _read(self, w: _Worker) -> None:
        assert self._loop is not None
        while True:
            try:
                message = w.conn.recv()
            except (EOFError, OSError):
                self._loop.call_soon_threadsafe(self._on_dead, w)
                return
            self._loop.call_soon_threadsafe(self._on_message, w, message)

    def _on_message(self, w: _Worker, message) -> None:
        if isinstance(message, ipc.Scored | ipc.JobDone | ipc.Opened | ipc.Added):
            job = self._jobs.get(message.job)
            part = job.parts.get(w.index) if job is not None else None
            if part is None:
                return
            if isinstance(message, ipc.Scored):
                job.on_scored(part, message.score)
            elif isinstance(message, ipc.JobDone):
                job.on_done(part, message.stats, message.error)
            elif isinstance(message, ipc.Opened):
                if message.error is not None:
                    part.opened.set_exception(message.error.rebuild())
                    part.done = True
                else:
                    part.opened.set_result(None)
            else:
                future = part.adds.get(message.seq)
                if future is not None and not future.done():
                    future.set_result(message)
        elif isinstance(message, ipc.Snapshot):
            w.info, w.stats = message.info, message.stats
        elif isinstance(message, ipc.Observed):
            observer = self.observer_for(w.label) if self.observer_for is not None else None
            if observer is not None:
                getattr(observer, message.method)(*message.args)
        elif isinstance(message, ipc.Ready):
            w.info = message.info
            if w.ready is not None and not w.ready.done():
                w.ready.set_result(None)
        elif isinstance(message, ipc.StartFailed):
            w.alive = False
            if w.ready is not None and not w.ready.done():
                w.ready.set_exception(ModelLoadError(f"worker on {w.device}: {message.error.message}"))

    def _on_dead(self, w: _Worker) -> None:
        if not w.alive:
            return
        w.alive = False
        if w.ready is not None and not w.ready.done():
            w.ready.set_exception(ModelLoadError(f"the worker on {w.device} exited while loading"))
            return
        if self._stopping:
            return
        reason = f"the engine worker on {w.label} died (exit code {w.process.exitcode})"
        log.error(reason)
        for job in list(self._jobs.values()):
            part = job.parts.get(w.index)
            if part is not None and not part.done:
                job.on_worker_died(part, reason)
        if self.on_failure is not None:
            self.on_failure(reason)

    # ---- jobs ---------------------------------------------------------------------------
    async def open_job(
        self, query: Query, instruction: str, deadline: float | None, truncate: bool = False, max_tokens: int = 0
    ) -> PoolJob:
        if not any(w.alive for w in self._workers):
            raise NotReady("no engine worker is alive")
        job = PoolJob(self, next(self._ids), query, instruction, deadline, truncate, max_tokens)
        self._jobs[job.id] = job
        return job

    def open(self, job: PoolJob, part: _Part) -> None:
        self.send(part.worker, ipc.OpenJob(job.id, job.query, job.instruction, job.deadline,
                                           job.truncate, job.max_tokens))

    def forget(self, job: PoolJob) -> None:
        self._jobs.pop(job.id, None)

    def assign(self, items: list[tuple[int, Document]]) -> dict[_Worker, list[tuple[int, Document]]]:
        live = {w: w.queued_tokens for w in self._workers if w.alive}
        if not live:
            raise NotReady("no engine worker is alive")
        out = self.router.assign(items, live)
        for w, chosen in out.items():
            self.routed[w.label] += len(chosen)
        return out

    # ---- introspection ------------------------------------------------------------------
    def info(self):
        infos = [w.info for w in self._workers if w.info is not None]
        first = infos[0]
        return dataclasses.replace(
            first,
            devices=tuple(d for info in infos for d in info.devices),
            image_cache_bytes=sum(i.image_cache_bytes for i in infos),
            image_cache_capacity_bytes=sum(i.image_cache_capacity_bytes for i in infos),
            image_cache_hits=sum(i.image_cache_hits for i in infos),
            image_cache_misses=sum(i.image_cache_misses for i in infos),
        )

    def stats(self):
        """Per-device engine stats snapshots, as last reported ({device: stats})."""
        return {w.label: w.stats for w in self._workers if w.stats is not None}
