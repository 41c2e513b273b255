"""The composition root: chooses the engine client, builds the service and the lifecycle, and
starts every transport over them on one event loop; SIGTERM drains."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import signal
from collections.abc import Callable
from typing import TYPE_CHECKING

from . import __version__, memory
from .config import AppConfig
from .engine.api import EngineClient
from .engine.config import EngineConfig
from .engine.engine import Engine
from .engine.stats import EngineStats
from .lifecycle import Lifecycle, State
from .observability.logs import AccessLog
from .observability.metrics import MetricsExporter, PrometheusObserver
from .observability.tracing import otlp_observer
from .rpc.interceptors import ServiceInterceptor
from .rpc.server import GrpcServer
from .security import TokenAuthenticator, grpc_server_credentials, uvicorn_ssl_options
from .service import Service
from .workers.pool import EngineFactory, WorkerPool, parse_devices

if TYPE_CHECKING:
    from .http.server import HttpServer

log = logging.getLogger(__name__)

# glibc malloc for the process (memory.py): the default 8 arenas per core let each decode, prep
# and gRPC thread keep its own freed heap; blocks from 1 MB up are mapped and given back on free.
ARENAS = 4
MMAP_THRESHOLD = 1 << 20


def mmap_threshold(config: AppConfig) -> int:
    """The fixed mmap threshold, unless the model computes on this process's CPU: there every
    activation of a batch over 1 MB would be mapped and unmapped again (a page fault per page it
    touches), which made each CPU batch 1.5x as long (bench/RESULTS.md, "The per-call cost"); glibc's
    own threshold then stays, and the arena cap and the idle-time malloc_trim still apply."""
    if config.workers.devices:  # the model runs in worker processes
        return MMAP_THRESHOLD
    device = config.engine.device
    if device is None:
        import torch

        return MMAP_THRESHOLD if torch.cuda.is_available() else 0
    return 0 if device.startswith("cpu") else MMAP_THRESHOLD


class App:
    """Binds first (health NOT_SERVING), then loads and warms the model, then SERVING."""

    def __init__(
        self,
        config: AppConfig,
        engine_factory: Callable[[EngineConfig], Engine] = Engine.load,
        worker_engine_factory: EngineFactory | None = None,
    ):
        """`worker_engine_factory(config, observer)` builds each worker's engine instead of loading
        the model (the benchmark's random 7B weights); it must be picklable."""
        self.config = config
        self._factory = engine_factory
        self._worker_factory = worker_engine_factory
        self.lifecycle = Lifecycle()
        # ---- operations: metrics, access log, traces ----
        self.metrics = PrometheusObserver()
        self.metrics.watch_engine(self._engine_stats, lambda: self.lifecycle.in_flight,
                                  per_device=bool(config.workers.devices))
        self.metrics_exporter = None
        # Without a metrics port nothing can read the metrics: nothing records them either (a
        # request observed ~20 histogram samples, bench/RESULTS.md "The per-call cost").
        self._recording: PrometheusObserver | None = None
        if config.metrics.port:
            self._recording = self.metrics
            self.metrics_exporter = MetricsExporter(self.metrics.registry, config.metrics.host, config.metrics.port)
        recorders = [self._recording] if self._recording is not None else []
        self.tracing = otlp_observer(config.log.otlp_endpoint) if config.log.otlp_endpoint else None
        request_observers: list = [*recorders, AccessLog()]
        if self.tracing is not None:
            request_observers.append(self.tracing)
        self.service = Service(self.lifecycle, config.service, observers=recorders)
        self.metrics.watch_score_cache(self.service.score_cache_stats)
        self.authenticator = TokenAuthenticator.from_config(config.security)
        self.interceptor = ServiceInterceptor(
            observers=request_observers,
            authenticator=self.authenticator, authenticate_reflection=config.security.auth_reflection
        )
        self.grpc = GrpcServer(self.service, self.lifecycle, config.grpc, self.interceptor,
                               credentials=grpc_server_credentials(config.security))
        if self.authenticator is not None and self.grpc.credentials is None:
            log.warning("bearer tokens are on without TLS: they cross the network in plaintext (--tls-cert)")
        # REST and the console: same service, lifecycle, auth, observers and size bound as gRPC.
        self.http: HttpServer | None = None
        if config.http.enabled:
            from .http.app import create_app  # FastAPI is loaded only when HTTP is on
            from .http.server import HttpServer

            rest = create_app(self.service, self.lifecycle, authenticator=self.interceptor.authenticator,
                              observers=self.interceptor.observers, max_body_bytes=config.grpc.max_message_mib << 20)
            self.http = HttpServer(rest, config.http.host, config.http.port, uvicorn_ssl_options(config.security))
        self.engine_client: EngineClient | None = None
        self._trimmer: asyncio.Task | None = None

    @property
    def port(self) -> int:
        return self.grpc.port

    @property
    def http_port(self) -> int:
        return self.http.port if self.http is not None else 0

    @property
    def engine(self) -> Engine | None:
        """The in-process engine (None with worker processes)."""
        return self.engine_client if isinstance(self.engine_client, Engine) else None

    def _engine_stats(self) -> list[EngineStats]:
        return self.engine_client.stats() if self.engine_client is not None else []

    async def start(self) -> None:
        await self.grpc.start()
        if self.metrics_exporter is not None:
            self.metrics_exporter.start()
        if self.http is not None:
            await self.http.start()

    async def _engine_client(self) -> EngineClient:
        workers = self.config.workers
        # The queued-token bound is the service's setting, enforced where tokens are known; the
        # tower's graphs of masked cells follow Explain's default grid.
        engine_config = dataclasses.replace(self.config.engine, max_queue_tokens=self.config.service.max_queue_tokens,
                                            tower_graph_cells=(self.config.service.explain_grid_size,))
        client: EngineClient
        if workers.devices:
            client = WorkerPool(
                engine_config,
                parse_devices(workers.devices),
                split_min_documents=workers.split_min_documents,
                log_level=self.config.log.level.upper(),
                engine_factory=self._worker_factory,
                observer_for=lambda device: self._recording,  # the workers' batch and queue timings
            )
        else:
            engine = await asyncio.to_thread(self._factory, engine_config)
            if self._recording is not None:
                engine.observe(self._recording)
            client = engine
        self.engine_client = client
        await client.start()
        # A dead scheduler, GPU thread or worker cannot recover: NOT_SERVING, and `run` exits 1.
        client.on_failure(self.lifecycle.fail)
        return client

    async def load(self) -> None:
        client = await self._engine_client()
        self.service.attach(client)
        info = client.info()
        if info.random_weights:
            log.warning(
                "%s has RANDOM weights (a generated test checkpoint): its scores are not relevance judgements",
                info.model,
            )
        log.info("model %s ready on %s (%s, attention %s)", info.model, ",".join(info.devices), info.dtype,
                 info.attention)
        self.metrics.set_build_info(__version__, info.model, info.dtype, ",".join(info.devices))
        memory.freeze_loaded_objects()
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
        if self.http is not None:
            await self.http.stop(max(0.0, deadline - loop.time()))
        if self._trimmer is not None:
            self._trimmer.cancel()
        if self.engine_client is not None:
            await self.engine_client.stop()
        memory.unfreeze()
        if self.lifecycle.state is not State.FAILED:
            self.lifecycle.stopped()
        if self.metrics_exporter is not None:
            self.metrics_exporter.stop()
        if self.tracing is not None:
            self.tracing.shutdown()


async def run(config: AppConfig, engine_factory: Callable[[EngineConfig], Engine] = Engine.load) -> int:
    """Runs until SIGTERM/SIGINT; returns the process exit code (non-zero when serving failed).
    `engine_factory` builds the in-process engine (tests/fault_server.py injects a fault through it)."""
    memory.configure_malloc(ARENAS, mmap_threshold(config))
    app = App(config, engine_factory=engine_factory)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    app.lifecycle.subscribe(lambda state: stop.set() if state is State.FAILED else None)
    try:
        await app.start()
    except BaseException:  # e.g. the HTTP port is taken: close what did start before exiting
        await app.grpc.stop(0)
        if app.metrics_exporter is not None:
            app.metrics_exporter.stop()
        raise
    log.info("listening on %s:%d", config.grpc.host, app.port)
    if app.http is not None:
        shown = "localhost" if config.http.host in ("0.0.0.0", "::") else config.http.host
        log.info("web console: http://%s:%d/  (REST API docs at /docs)", shown, app.http_port)
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
