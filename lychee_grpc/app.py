"""The composition root: chooses the engine client, builds the service and the lifecycle, and
starts every transport over them on one event loop; SIGTERM drains."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable

from . import memory
from .config import AppConfig
from .engine.config import EngineConfig
from .engine.engine import Engine
from .lifecycle import Lifecycle, State
from .rpc.interceptors import ServiceInterceptor
from .rpc.server import GrpcServer
from .service import Service
from .workers.local import LocalEngineClient

log = logging.getLogger(__name__)

# glibc malloc for the process (memory.py): the default 8 arenas per core let each decode, prep
# and gRPC thread keep its own freed heap; blocks from 1 MB up are mapped and given back on free.
ARENAS = 4
MMAP_THRESHOLD = 1 << 20


class App:
    """Binds first (health NOT_SERVING), then loads and warms the model, then SERVING."""

    def __init__(self, config: AppConfig, engine_factory: Callable[[EngineConfig], Engine] = Engine.load):
        self.config = config
        self._factory = engine_factory
        self.lifecycle = Lifecycle()
        self.service = Service(self.lifecycle, config.service)
        self.interceptor = ServiceInterceptor()
        self.grpc = GrpcServer(self.service, self.lifecycle, config.grpc, self.interceptor)
        self.engine_client: LocalEngineClient | None = None
        self._trimmer: asyncio.Task | None = None

    @property
    def port(self) -> int:
        return self.grpc.port

    @property
    def engine(self) -> Engine | None:
        return self.engine_client.engine if self.engine_client is not None else None

    async def start(self) -> None:
        await self.grpc.start()

    async def load(self) -> None:
        engine = await asyncio.to_thread(self._factory, self.config.engine)
        client = LocalEngineClient(engine)
        await client.start()
        self.engine_client = client
        self.service.attach(client)
        # A dead scheduler or GPU worker cannot recover in-process: NOT_SERVING, and `run` exits 1.
        engine.on_failure(lambda exc: self.lifecycle.fail(f"the engine died: {exc!r}"))
        info = engine.info()
        if info.random_weights:
            log.warning(
                "%s has RANDOM weights (a generated test checkpoint): its scores are not relevance judgements",
                info.model,
            )
        log.info("model %s ready on %s (%s, attention %s)", info.model, ",".join(info.devices), info.dtype,
                 info.attention)
        self.lifecycle.serve()
        await self.grpc.settle_health()
        self._trimmer = asyncio.create_task(memory.trim_when_grown(lambda: self.lifecycle.in_flight == 0))

    async def stop(self) -> None:
        """NOT_SERVING, refuse new requests (UNAVAILABLE, so clients retry elsewhere), let in-flight
        ones finish within the grace period, then close. Health keeps answering meanwhile."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.config.grace_seconds
        self.lifecycle.drain()
        await self.grpc.settle_health()
        if not await self.lifecycle.wait_idle(self.config.grace_seconds):
            log.warning("%d requests still in flight after the grace period", self.lifecycle.in_flight)
        await self.grpc.stop(max(0.0, deadline - loop.time()))
        if self._trimmer is not None:
            self._trimmer.cancel()
        if self.engine_client is not None:
            await self.engine_client.stop()
        if self.lifecycle.state is not State.FAILED:
            self.lifecycle.stopped()


async def run(config: AppConfig) -> int:
    """Runs until SIGTERM/SIGINT; returns the process exit code (non-zero when serving failed)."""
    memory.configure_malloc(ARENAS, MMAP_THRESHOLD)
    app = App(config)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    app.lifecycle.subscribe(lambda state: stop.set() if state is State.FAILED else None)
    await app.start()
    log.info("listening on %s:%d", config.grpc.host, app.port)
    loader = asyncio.create_task(app.load())
    stopper = asyncio.create_task(stop.wait())
    done, _ = await asyncio.wait({loader, stopper}, return_when=asyncio.FIRST_COMPLETED)
    if loader in done and loader.exception() is not None:
        await app.stop()
        raise loader.exception()  # type: ignore[misc]
    if loader in done:
        log.info("serving %s on port %d", config.engine.model, app.port)
        await stopper
    else:
        loader.cancel()
    log.info("draining (NOT_SERVING)")
    await app.stop()
    log.info("stopped")
    return 1 if app.lifecycle.state is State.FAILED else 0
