"""The gRPC server: RerankService over grpc.aio, standard health, reflection, draining."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from . import __version__, convert
from .engine.config import EngineConfig
from .engine.engine import Engine, Ranking, rank
from .engine.errors import FieldViolation, InvalidInput, NotReady
from .errors import mapped
from .proto import lychee_pb2 as pb
from .proto import lychee_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["RerankService"].full_name


@dataclass
class ServerConfig:
    host: str = "0.0.0.0"
    port: int = 50051
    max_receive_bytes: int = 256 * 1024 * 1024  # 100 product images of a few MB each
    max_send_bytes: int = 256 * 1024 * 1024
    grace_seconds: float = 30.0
    # Closing connections after this age makes clients re-resolve (Kubernetes scale-out).
    max_connection_age_seconds: float = 300.0
    max_connection_age_grace_seconds: float = 60.0


class RerankService(pb_grpc.RerankServiceServicer):
    def __init__(self, server: LycheeServer):
        self._server = server

    def _engine(self) -> Engine:
        engine = self._server.engine
        if engine is None or not engine.ready:
            raise NotReady("the model is loading; retry shortly")
        if not self._server.accepting:
            raise NotReady("the server is shutting down; retry on another replica")
        return engine

    @staticmethod
    def _deadline(context: grpc.aio.ServicerContext) -> float | None:
        remaining = context.time_remaining()
        return None if remaining is None else time.monotonic() + remaining

    @mapped
    async def Rerank(self, request: pb.RerankRequest, context) -> pb.RerankResponse:
        engine = self._engine()
        with self._server.in_flight():
            return await self._rerank(engine, request, context)

    async def _rerank(self, engine: Engine, request: pb.RerankRequest, context) -> pb.RerankResponse:
        query = convert.query_from_proto(request.query, request.HasField("query"))
        documents = convert.documents_from_proto(request.documents)
        ranking = await engine.rerank(
            query,
            documents,
            instruction=request.instruction,
            top_n=request.top_n,
            deadline=self._deadline(context),
        )
        return convert.rerank_response(
            ranking,
            engine.config.bands,
            engine.config.model,
            request.documents if request.return_documents else None,
        )

    @mapped
    async def RerankStream(self, request_iterator, context):
        engine = self._engine()
        with self._server.in_flight():
            async for response in self._rerank_stream(engine, request_iterator, context):
                yield response

    async def _rerank_stream(self, engine: Engine, request_iterator, context):
        started = time.perf_counter()
        first = await anext(aiter(request_iterator), None)
        if first is None or not first.HasField("options"):
            raise InvalidInput([FieldViolation("options", "the first message must carry the query options")])
        options = first.options
        query = convert.query_from_proto(options.query, options.HasField("query"))
        job = await engine.open_job(query, options.instruction, self._deadline(context))
        sent: list[pb.Document] = []

        async def add(message: pb.RerankStreamRequest) -> None:
            docs = convert.documents_from_proto(message.documents, job.next_index)
            if docs:
                await engine.add_documents(job, docs)
                if options.return_documents:
                    sent.extend(message.documents)

        async def read() -> None:
            try:
                await add(first)
                async for message in request_iterator:
                    if message.HasField("options"):
                        raise InvalidInput([FieldViolation("options", "only the first message may carry options")])
                    await add(message)
                job.close()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                job.fail(exc)

        reader = asyncio.create_task(read())
        scores = []
        try:
            async for score in job.results():
                scores.append(score)
                doc = sent[score.index] if options.return_documents else None
                yield pb.RerankStreamResponse(scored=convert.result(score, engine.config.bands, doc))
        finally:
            if not reader.done():
                reader.cancel()
            job.cancel()

        job.stats.timings.total_ms = (time.perf_counter() - started) * 1e3
        ranking = Ranking(rank(scores, options.top_n), job.stats)
        yield pb.RerankStreamResponse(
            ranking=convert.rerank_response(
                ranking, engine.config.bands, engine.config.model, sent if options.return_documents else None
            )
        )

    @mapped
    async def GetModelInfo(self, request, context) -> pb.GetModelInfoResponse:
        engine = self._engine()
        return convert.model_info(engine.info(), __version__)


class LycheeServer:
    """Binds first (health NOT_SERVING), then loads and warms the model, then SERVING."""

    def __init__(
        self,
        engine_config: EngineConfig,
        config: ServerConfig,
        engine_factory: Callable[[EngineConfig], Engine] = Engine.load,
    ):
        self.engine_config = engine_config
        self.config = config
        self._factory = engine_factory
        self.engine: Engine | None = None
        self.accepting = True
        self.health = health.aio.HealthServicer()
        self.port = 0
        self.inflight = 0
        self._server: grpc.aio.Server | None = None

    @contextlib.contextmanager
    def in_flight(self):
        self.inflight += 1
        try:
            yield
        finally:
            self.inflight -= 1

    async def start(self) -> int:
        c = self.config
        options = [
            ("grpc.max_receive_message_length", c.max_receive_bytes),
            ("grpc.max_send_message_length", c.max_send_bytes),
        ]
        if c.max_connection_age_seconds > 0:
            options += [
                ("grpc.max_connection_age_ms", int(c.max_connection_age_seconds * 1000)),
                ("grpc.max_connection_age_grace_ms", int(c.max_connection_age_grace_seconds * 1000)),
            ]
        server = grpc.aio.server(options=options)
        pb_grpc.add_RerankServiceServicer_to_server(RerankService(self), server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        reflection.enable_server_reflection(
            (SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME),
            server,
        )
        self.port = server.add_insecure_port(f"{c.host}:{c.port}")
        if self.port == 0:
            raise OSError(f"cannot bind {c.host}:{c.port}")
        await self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        await server.start()
        self._server = server
        log.info("listening on %s:%d (NOT_SERVING until the model is loaded)", c.host, self.port)
        return self.port

    async def _set_health(self, status) -> None:
        for name in ("", SERVICE_NAME):
            await self.health.set(name, status)

    async def load(self) -> None:
        engine = await asyncio.to_thread(self._factory, self.engine_config)
        await engine.start()
        self.engine = engine
        info = engine.info()
        if info.random_weights:
            log.warning(
                "%s has RANDOM weights (a generated test checkpoint): its scores are not relevance judgements",
                info.model,
            )
        log.info("model %s ready on %s (%s, attention %s)", info.model, ",".join(info.devices), info.dtype,
                 info.attention)
        await self._set_health(health_pb2.HealthCheckResponse.SERVING)

    async def stop(self) -> None:
        """NOT_SERVING, refuse new RPCs (UNAVAILABLE, so clients retry elsewhere), let in-flight
        ones finish within the grace period, then close. Health keeps answering meanwhile."""
        self.accepting = False
        await self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.config.grace_seconds
        while self.inflight > 0 and loop.time() < deadline:
            await asyncio.sleep(0.02)
        if self._server is not None:
            await self._server.stop(max(0.0, deadline - loop.time()))
        if self.engine is not None:
            await self.engine.stop()


async def run(engine_config: EngineConfig, config: ServerConfig) -> int:
    """Runs until SIGTERM/SIGINT; returns the process exit code."""
    server = LycheeServer(engine_config, config)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await server.start()
    print(f"lychee-grpc: listening on {config.host}:{server.port}", flush=True)
    loader = asyncio.create_task(server.load())
    stopper = asyncio.create_task(stop.wait())
    done, _ = await asyncio.wait({loader, stopper}, return_when=asyncio.FIRST_COMPLETED)
    if loader in done and loader.exception() is not None:
        await server.stop()
        raise loader.exception()  # type: ignore[misc]
    if loader in done:
        print(f"lychee-grpc: serving {engine_config.model} on port {server.port}", flush=True)
        await stopper
    else:
        loader.cancel()
    print("lychee-grpc: draining (NOT_SERVING)", flush=True)
    await server.stop()
    print("lychee-grpc: stopped", flush=True)
    return 0
