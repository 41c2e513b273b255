"""An engine worker process: one Engine on one device, driven over a pipe by the pool.

Started with the `spawn` method; torch is imported only here, after CUDA_VISIBLE_DEVICES names
the worker's one GPU, so each worker sees its device as cuda:0.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import threading
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING

from .. import memory
from ..engine.config import EngineConfig
from ..engine.stats import StatsObserver
from . import ipc

if TYPE_CHECKING:  # torch is imported once the worker's device is set
    from ..engine.engine import Engine
    from ..engine.job import Job

log = logging.getLogger(__name__)

SNAPSHOT_SECONDS = 0.5


def main(conn: Connection, engine_config: EngineConfig, cuda_index: int | None, log_level: str = "INFO",
         engine_factory: Callable[[EngineConfig, StatsObserver], Engine] | None = None) -> None:
    """`engine_factory(config, observer) -> Engine` replaces loading `config.model` (the benchmark
    builds random weights of the 7B shape this way; it is never a server setting)."""
    if cuda_index is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = str(cuda_index)
        engine_config = dataclasses.replace(engine_config, device="cuda:0")
    logging.basicConfig(level=log_level, format="%(asctime)s %(levelname)s worker %(process)d %(name)s: %(message)s")
    asyncio.run(WorkerLoop(conn, engine_config, engine_factory).serve())


class Forward(StatsObserver):
    """A StatsObserver whose every call is replayed in the pool's process."""

    def __init__(self, send: Callable[[ipc.ToPool], None]):
        self._send = send

    def batch_done(self, documents: int, tokens: int, images: int, seconds: float) -> None:
        self._send(ipc.Observed("batch_done", (documents, tokens, images, seconds)))

    def documents_dropped(self, count: int, reason: str) -> None:
        self._send(ipc.Observed("documents_dropped", (count, reason)))

    def oom_split(self) -> None:
        self._send(ipc.Observed("oom_split", ()))

    def oom_alone(self, retried: int, refused: int) -> None:
        self._send(ipc.Observed("oom_alone", (retried, refused)))

    def image_cache(self, hits: int, misses: int) -> None:
        self._send(ipc.Observed("image_cache", (hits, misses)))

    def prefix_saved(self, tokens: int) -> None:
        self._send(ipc.Observed("prefix_saved", (tokens,)))

    def queue_wait(self, seconds: float) -> None:
        self._send(ipc.Observed("queue_wait", (seconds,)))


class WorkerLoop:
    """The worker's event loop: runs the pool's commands against its engine, job by job."""

    def __init__(self, conn: Connection, engine_config: EngineConfig,
                 engine_factory: Callable[[EngineConfig, StatsObserver], Engine] | None = None):
        self.conn = conn
        self.config = engine_config
        self.engine_factory = engine_factory
        self.queues: dict[int, asyncio.Queue[ipc.JobCommand]] = {}
        self.tasks: set[asyncio.Task[None]] = set()
        self._send_lock = threading.Lock()

    def send(self, message: ipc.ToPool) -> None:
        with self._send_lock:  # observer calls come from the engine's GPU thread too
            self.conn.send(message)

    async def serve(self) -> None:
        loop = asyncio.get_running_loop()
        inbox: asyncio.Queue[ipc.ToWorker] = asyncio.Queue()

        def read() -> None:
            while True:
                try:
                    message = self.conn.recv()
                except (EOFError, OSError):
                    message = ipc.Shutdown()
                loop.call_soon_threadsafe(inbox.put_nowait, message)
                if isinstance(message, ipc.Shutdown):
                    return

        threading.Thread(target=read, name="lychee-worker-pipe", daemon=True).start()
        try:
            engine = await asyncio.to_thread(self._load)
            await engine.start()
        except Exception as exc:
            log.exception("engine failed to start")
            self.send(ipc.StartFailed(ipc.WireError.of(exc)))
            return
        self.engine = engine
        memory.freeze_loaded_objects()
        self.send(ipc.Ready(engine.info()))
        snapshots = asyncio.create_task(self._snapshots())
        try:
            while True:
                message = await inbox.get()
                if isinstance(message, ipc.Shutdown):
                    break
                self._dispatch(message)
        finally:
            snapshots.cancel()
            await engine.stop()

    def _load(self) -> Engine:
        if self.engine_factory is not None:
            return self.engine_factory(self.config, Forward(self.send))
        from ..engine.engine import Engine
        from ..engine.model.loader import load_model

        return Engine(self.config, load_model(self.config), observer=Forward(self.send))

    def _snapshot(self) -> ipc.Snapshot:
        (stats,) = self.engine.stats()  # one engine, one device
        return ipc.Snapshot(self.engine.info(), stats)

    async def _snapshots(self) -> None:
        while True:
            await asyncio.sleep(SNAPSHOT_SECONDS)
            self.send(self._snapshot())

    def _dispatch(self, message: ipc.ToWorker) -> None:
        if isinstance(message, ipc.OpenJob):
            queue: asyncio.Queue[ipc.JobCommand] = asyncio.Queue()
            self.queues[message.job] = queue
            task = asyncio.create_task(self._run_job(message, queue))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)
        elif isinstance(message, ipc.AddDocuments | ipc.CloseJob | ipc.CancelJob) and message.job in self.queues:
            self.queues[message.job].put_nowait(message)  # commands of one job run in order, after its opening

    async def _run_job(self, opening: ipc.OpenJob, commands: asyncio.Queue[ipc.JobCommand]) -> None:
        job_id = opening.job
        try:
            job = await self.engine.open_job(opening.query, opening.instruction, opening.truncation,
                                             opening.max_tokens_per_document, opening.deadline)
        except Exception as exc:
            self.send(ipc.Opened(job_id, ipc.WireError.of(exc)))
            self.queues.pop(job_id, None)
            return
        self.send(ipc.Opened(job_id))
        pump = asyncio.create_task(self._pump(job_id, job))
        try:
            while not pump.done():
                getter = asyncio.create_task(commands.get())
                await asyncio.wait({getter, pump}, return_when=asyncio.FIRST_COMPLETED)
                if not getter.done():
                    getter.cancel()
                    break
                await self._command(job, getter.result())
        finally:
            await pump
            self.queues.pop(job_id, None)

    async def _command(self, job: Job, message: ipc.JobCommand) -> None:
        if isinstance(message, ipc.AddDocuments):
            try:
                tokens = await job.add_documents(message.documents)
            except Exception as exc:
                self.send(ipc.Added(message.job, message.seq, error=ipc.WireError.of(exc)))
                return
            self.send(ipc.Added(message.job, message.seq, tokens))
        elif isinstance(message, ipc.CloseJob):
            if not job.closed:
                job.close()
        elif isinstance(message, ipc.CancelJob):
            job.cancel()
            if not job.closed:
                job.close()

    async def _pump(self, job_id: int, job: Job) -> None:
        error = None
        try:
            async for score in job.results():
                self.send(ipc.Scored(job_id, score))
        except Exception as exc:
            error = ipc.WireError.of(exc)
        with contextlib.suppress(Exception):
            self.send(ipc.JobDone(job_id, job.stats, error))
            self.send(self._snapshot())
