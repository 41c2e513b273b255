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
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess

from ..engine.api import EngineClient, EngineInfo, IndexedDocument, Truncation
from ..engine.config import EngineConfig
from ..engine.errors import ModelLoadError, NotReady
from ..engine.stats import EngineStats, StatsObserver
from ..engine.types import Query
from . import ipc, worker
from .pool_job import PoolJob, WorkerShare
from .routing import Router

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
    devices = [device.strip() for device in spec.split(",") if device.strip()]
    for device in devices:
        if device != "cpu" and not (device.startswith("cuda:") and device[5:].isdigit()):
            raise ModelLoadError(f"--devices: {device!r} is not cpu or cuda:N")
    cuda = [device for device in devices if device != "cpu"]
    if len(set(cuda)) != len(cuda):
        raise ModelLoadError("--devices: a GPU is listed twice (one worker per GPU)")
    return devices


@dataclass(eq=False)
class WorkerProcess:
    index: int
    device: str
    label: str  # the device, or cpu:<index> for CPU workers (tests run two on one CPU)
    process: BaseProcess
    conn: Connection
    alive: bool = True
    queued_tokens: int = 0
    info: EngineInfo | None = None
    stats: EngineStats | None = None
    ready: asyncio.Future[None] | None = None


# Builds a worker's engine in place of loading the model (the benchmark's random 7B weights):
# `factory(config, observer) -> Engine`; picklable, as it crosses to each worker process.
EngineFactory = Callable[[EngineConfig, StatsObserver], object]


class WorkerPool(EngineClient):
    """EngineClient over one worker process per device."""

    def __init__(
        self,
        engine_config: EngineConfig,
        devices: list[str],
        observer_for: Callable[[str], StatsObserver | None] | None = None,
        split_min_documents: int = 16,
        log_level: str = "INFO",
        engine_factory: EngineFactory | None = None,
    ):
        self.engine_config = engine_config
        self.devices = devices
        self.observer_for = observer_for
        self.router: Router[WorkerProcess] = Router(split_min_documents)
        self.log_level = log_level
        self.engine_factory = engine_factory
        self._on_failure: list[Callable[[str], None]] = []
        self._processes: list[WorkerProcess] = []
        self._jobs: dict[int, PoolJob] = {}
        self._ids = itertools.count(1)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping = False
        self.routed: Counter[str] = Counter()  # documents sent to each worker, by label

    @property
    def workers(self) -> int:
        return len(self.devices)

    @property
    def ready(self) -> bool:
        return bool(self._processes) and all(proc.alive and proc.info is not None for proc in self._processes)

    def on_failure(self, callback: Callable[[str], None]) -> None:
        self._on_failure.append(callback)

    # ---- lifecycle ----------------------------------------------------------------------
    def worker_config(self, device: str) -> EngineConfig:
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
            spawned = WorkerProcess(index, device, label, process, parent, ready=self._loop.create_future())
            self._processes.append(spawned)
            threading.Thread(target=self._read, args=(spawned,), name=f"lychee-pool-{index}", daemon=True).start()
        for spawned in self._processes:
            assert spawned.ready is not None
            await spawned.ready
        log.info("%d engine workers ready on %s", len(self._processes), ", ".join(self.devices))

    async def stop(self) -> None:
        self._stopping = True
        for proc in self._processes:
            if proc.alive:
                self.send(proc, ipc.Shutdown())
        deadline = time.monotonic() + STOP_SECONDS
        for proc in self._processes:
            await asyncio.to_thread(proc.process.join, max(0.1, deadline - time.monotonic()))
            if proc.process.is_alive():
                proc.process.kill()

    # ---- the pipes ----------------------------------------------------------------------
    def send(self, to: WorkerProcess, message: ipc.ToWorker) -> None:
        if not to.alive:
            return
        try:
            to.conn.send(message)
        except (OSError, EOFError, BrokenPipeError):
            self._on_dead(to)

    def _read(self, source: WorkerProcess) -> None:
        assert self._loop is not None
        while True:
            try:
                message = source.conn.recv()
            except (EOFError, OSError):
                self._loop.call_soon_threadsafe(self._on_dead, source)
                return
            self._loop.call_soon_threadsafe(self._on_message, source, message)

    def _on_message(self, source: WorkerProcess, message: ipc.ToPool) -> None:
        if isinstance(message, ipc.Scored | ipc.JobDone | ipc.Opened | ipc.Added):
            job = self._jobs.get(message.job)
            share = job.shares.get(source.index) if job is not None else None
            if job is None or share is None:
                return
            if isinstance(message, ipc.Scored):
                job.on_scored(share, message.score)
            elif isinstance(message, ipc.JobDone):
                job.on_done(share, message.stats, message.error)
            elif isinstance(message, ipc.Opened):
                if message.error is not None:
                    share.opened.set_exception(message.error.rebuild())
                    share.done = True
                else:
                    share.opened.set_result(None)
            else:
                future = share.adds.get(message.seq)
                if future is not None and not future.done():
                    future.set_result(message)
        elif isinstance(message, ipc.Snapshot):
            source.info, source.stats = message.info, message.stats
        elif isinstance(message, ipc.Observed):
            observer = self.observer_for(source.label) if self.observer_for is not None else None
            if observer is not None:
                getattr(observer, message.method)(*message.args)
        elif isinstance(message, ipc.Ready):
            source.info = message.info
            if source.ready is not None and not source.ready.done():
                source.ready.set_result(None)
        elif isinstance(message, ipc.StartFailed):
            source.alive = False
            if source.ready is not None and not source.ready.done():
                source.ready.set_exception(ModelLoadError(f"worker on {source.device}: {message.error.message}"))

    def _on_dead(self, dead: WorkerProcess) -> None:
        if not dead.alive:
            return
        dead.alive = False
        if dead.ready is not None and not dead.ready.done():
            dead.ready.set_exception(ModelLoadError(f"the worker on {dead.device} exited while loading"))
            return
        if self._stopping:
            return
        reason = f"the engine worker on {dead.label} died (exit code {dead.process.exitcode})"
        log.error(reason)
        for job in list(self._jobs.values()):
            share = job.shares.get(dead.index)
            if share is not None and not share.done:
                job.on_worker_died(share, reason)
        for callback in self._on_failure:
            callback(reason)

    # ---- jobs ---------------------------------------------------------------------------
    async def open_job(
        self,
        query: Query,
        instruction: str = "",
        truncation: Truncation = Truncation.NONE,
        max_tokens_per_document: int = 0,
        deadline: float | None = None,
    ) -> PoolJob:
        if not any(proc.alive for proc in self._processes):
            raise NotReady("no engine worker is alive")
        job = PoolJob(self, next(self._ids), query, instruction, truncation, max_tokens_per_document, deadline)
        self._jobs[job.id] = job
        return job

    def open(self, job: PoolJob, share: WorkerShare) -> None:
        self.send(share.worker, ipc.OpenJob(job.id, job.query, job.instruction, job.truncation,
                                            job.max_tokens_per_document, job.deadline))

    def forget(self, job: PoolJob) -> None:
        self._jobs.pop(job.id, None)

    def assign(self, items: Sequence[IndexedDocument]) -> dict[WorkerProcess, list[IndexedDocument]]:
        live = {proc: proc.queued_tokens for proc in self._processes if proc.alive}
        if not live:
            raise NotReady("no engine worker is alive")
        out = self.router.assign(items, live)
        for chosen_worker, chosen in out.items():
            self.routed[chosen_worker.label] += len(chosen)
        return out

    # ---- introspection ------------------------------------------------------------------
    def info(self) -> EngineInfo:
        infos = [proc.info for proc in self._processes if proc.info is not None]
        if not infos:
            raise NotReady("no engine worker has started")
        return EngineInfo.combined(infos)

    def stats(self) -> list[EngineStats]:
        """Each worker's engine stats as last reported, labelled by worker (two CPU workers are
        cpu:0 and cpu:1, where each engine only knows it runs on the cpu)."""
        return [dataclasses.replace(proc.stats, device=proc.label)
                for proc in self._processes if proc.stats is not None]
