"""The composition root: chooses the engine client, builds the service and the lifecycle, and
starts every transport over them on one event loop; SIGTERM drains."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import signal
from collections.abc import Callable

from . import __version__
from .config import AppConfig
from .engine.config import EngineConfig
from .engine.engine import Engine
from .lifecycle import Lifecycle, State
from .observability.logs import AccessLog
from .observability.metrics import MetricsExporter, PrometheusObserver
from .observability.tracing import otlp_observer
from .rpc.interceptors import ServiceInterceptor
from .rpc.server import GrpcServer
from .service import Service
from .workers.local import LocalEngineClient

log = logging.getLogger(__name__)


class App:
    """Binds first (health NOT_SERVING), then loads and warms the model, then SERVING."""

    def __init__(self, config: AppConfig, engine_factory: Callable[[EngineConfig], Engine] = Engine.load):
        self.config = config
        self._factory = engine_factory
        self.lifecycle = Lifecycle()
        # ---- operations: metrics, access log, traces ----
        self.metrics = PrometheusObserver()
        self.metrics.watch_engine(self._engine_stats, lambda: self.lifecycle.in_flight)
        self.metrics_exporter = None
        if config.metrics.port:
            self.metrics_exporter = MetricsExporter(self.metrics.registry, config.metrics.host, config.metrics.port)
        self.tracing = otlp_observer(config.log.otlp_endpoint) if config.log.otlp_endpoint else None
        request_observers: list = [self.metrics, AccessLog()]
        if self.tracing is not None:
            request_observers.append(self.tracing)
        self.service = Service(self.lifecycle, config.service, observers=[self.metrics])
        self.interceptor = ServiceInterceptor(observers=request_observers)
        self.grpc = GrpcServer(self.service, self.lifecycle, config.grpc, self.interceptor)
        self.engine_client: LocalEngineClient | None = None

    @property
    def port(self) -> int:
        return self.grpc.port

    @property
    def engine(self) -> Engine | None:
        return self.engine_client.engine if self.engine_client is not None else None

    def _engine_stats(self):
        return self.engine_client.stats() if self.engine_client is not None else None

    async def start(self) -> None:
        await self.grpc.start()
        if self.metrics_exporter is not None:
            self.metrics_exporter.start()

    async def load(self) -> None:
        # The queued-token bound is the service's setting, enforced where tokens are known.
        engine_config = dataclasses.replace(self.config.engine, max_queue_tokens=self.config.service.max_queue_tokens)
        engine = await asyncio.to_thread(self._factory, engine_config)
        engine.recorder.observer = self.metrics
        client = LocalEngineClient(engine)
        await client.start()
        self.engine_client = client
        self.service.attach(client)
        info = engine.info()
        if info.random_weights:
            log.warning(
                "%s has RANDOM weights (a generated test checkpoint): its scores are not relevance judgements",
                info.model,
            )
        log.info("model %s ready on %s (%s, attention %s)", info.model, ",".join(info.devices), info.dtype,
                 info.attention)
        self.metrics.set_build_info(__version__, info.model, info.dtype, ",".join(info.devices))
        self.lifecycle.serve()
        await self.grpc.settle_health()

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
        if self.engine_client is not None:
            await self.engine_client.stop()
        if self.lifecycle.state is not State.FAILED:
            self.lifecycle.stopped()
        if self.metrics_exporter is not None:
            self.metrics_exporter.stop()
        if self.tracing is not None:
            self.tracing.shutdown()


async def run(config: AppConfig) -> int:
    """Runs until SIGTERM/SIGINT; returns the process exit code (non-zero when serving failed)."""
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
