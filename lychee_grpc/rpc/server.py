"""The grpc.aio server: servicer, the interceptor wrapping each handler, health driven by the lifecycle, reflection."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2_grpc

from ..config import GrpcConfig
from ..lifecycle import Lifecycle, State
from ..proto import lychee_pb2 as pb
from ..proto import lychee_pb2_grpc as pb_grpc
from ..service import Service
from .interceptors import ServiceInterceptor
from .servicer import RerankServicer

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    Handler = grpc.RpcMethodHandler[Any, Any]

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["RerankService"].full_name


class HealthSetter(Protocol):
    """What this server calls on grpc_health's aio HealthServicer."""

    async def set(self, service: str, status: health_pb2.HealthCheckResponse.ServingStatus) -> None: ...


class _WrappedGeneric(grpc.GenericRpcHandler):
    """A generic handler whose handlers pass through the interceptor (once per method)."""

    def __init__(self, inner: grpc.GenericRpcHandler, interceptor: ServiceInterceptor):
        self._inner = inner
        self._interceptor = interceptor
        self._wrapped: dict[str, tuple[Handler, Handler]] = {}

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> Handler | None:  # pyright: ignore[reportIncompatibleMethodOverride]  # grpc's stub omits None
        method = handler_call_details.method
        handler = self._inner.service(handler_call_details)
        if handler is None:
            return None
        known = self._wrapped.get(method)
        if known is None or known[0] is not handler:
            known = self._wrapped[method] = (handler, self._interceptor.wrap(method, handler))
        return known[1]


class _Registrar:
    """The server as the generated `add_*_to_server` functions see it: every method handler they
    register passes through the interceptor once, at registration, so every service present and
    future gets the request id, the token check, the error mapping and the observers."""

    def __init__(self, server: grpc.aio.Server, interceptor: ServiceInterceptor):
        self._server = server
        self._interceptor = interceptor

    def add_generic_rpc_handlers(self, handlers: Sequence[grpc.GenericRpcHandler]) -> None:
        self._server.add_generic_rpc_handlers(tuple(_WrappedGeneric(h, self._interceptor) for h in handlers))

    def add_registered_method_handlers(self, service: str, handlers: dict[str, Handler]) -> None:
        wrap = self._interceptor.wrap
        # grpc.aio's Server has it (grpcio 1.85, called by every generated add_*_to_server); its stub does not.
        self._server.add_registered_method_handlers(  # pyright: ignore[reportAttributeAccessIssue, reportUnknownMemberType]
            service, {name: wrap(f"/{service}/{name}", h) for name, h in handlers.items()})


class GrpcServer:
    def __init__(
        self,
        service: Service,
        lifecycle: Lifecycle,
        config: GrpcConfig,
        interceptor: ServiceInterceptor | None = None,
        credentials: grpc.ServerCredentials | None = None,
    ):
        self.service = service
        self.lifecycle = lifecycle
        self.config = config
        self.interceptor = interceptor or ServiceInterceptor()
        self.credentials = credentials
        # grpc_health's stub has no aio module; HealthServicer.set(name, status) is all we call.
        self.health: HealthSetter = health.aio.HealthServicer()  # pyright: ignore
        self.port = 0
        self.health_port = 0
        self._server: grpc.aio.Server | None = None
        self._health_server: grpc.aio.Server | None = None
        self._health_updates: set[asyncio.Task[None]] = set()

    async def start(self) -> int:
        c = self.config
        options = [
            ("grpc.max_receive_message_length", c.max_message_mib << 20),
            ("grpc.max_send_message_length", c.max_message_mib << 20),
        ]
        if c.max_connection_age_seconds > 0:
            options += [
                ("grpc.max_connection_age_ms", int(c.max_connection_age_seconds * 1000)),
                ("grpc.max_connection_age_grace_ms", int(c.max_connection_age_grace_seconds * 1000)),
            ]
        server = grpc.aio.server(options=options)
        registrar = _Registrar(server, self.interceptor)
        pb_grpc.add_RerankServiceServicer_to_server(RerankServicer(self.service), registrar)  # pyright: ignore[reportUnknownMemberType]  # generated, untyped
        health_pb2_grpc.add_HealthServicer_to_server(self.health, registrar)  # pyright: ignore[reportArgumentType, reportUnknownMemberType]  # the aio servicer
        if c.reflection:
            # enable_server_reflection picks the aio servicer only for a grpc.aio.Server itself.
            names = (SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME)
            reflection_pb2_grpc.add_ServerReflectionServicer_to_server(  # pyright: ignore[reportUnknownMemberType]  # generated, untyped
                reflection.aio.ReflectionServicer(names), registrar)  # pyright: ignore[reportArgumentType]
        address = f"{c.host}:{c.port}"
        try:
            if self.credentials is not None:
                self.port = server.add_secure_port(address, self.credentials)
            else:
                self.port = server.add_insecure_port(address)
        except RuntimeError:  # grpc's "Failed to bind": taken, or not an address of this machine
            self.port = 0
        if self.port == 0:
            raise OSError(f"cannot bind gRPC on {address}: the port is taken or the address is not this machine's "
                          "(--port: choose another port, or 0 for a free one; --host)")
        await server.start()
        self._server = server
        if c.health_port:
            await self._start_health_server(f"{c.host}:{c.health_port}")
        self.lifecycle.subscribe(self._on_state)
        await self.settle_health()
        log.info("gRPC listening on %s:%d%s", c.host, self.port, " (TLS)" if self.credentials else "")
        return self.port

    async def _start_health_server(self, address: str) -> None:
        """The same health statuses on a plaintext port that serves nothing else: the kubelet's gRPC
        probe cannot present a client certificate, and nothing but health is reachable here."""
        server = grpc.aio.server()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)  # pyright: ignore[reportArgumentType, reportUnknownMemberType]  # the aio servicer
        self.health_port = server.add_insecure_port(address)
        if self.health_port == 0:
            raise OSError(f"cannot bind gRPC health on {address}: the port is taken or the address is not this "
                          "machine's (--health-port: choose another port, or leave it unset for none)")
        await server.start()
        self._health_server = server
        log.info("gRPC health (plaintext, health only) on %s", address)

    def _on_state(self, state: State) -> None:
        status = (
            health_pb2.HealthCheckResponse.SERVING if state is State.SERVING
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        task = asyncio.get_running_loop().create_task(self._set_health(status))
        self._health_updates.add(task)
        task.add_done_callback(self._health_updates.discard)

    async def _set_health(self, status: health_pb2.HealthCheckResponse.ServingStatus) -> None:
        for name in ("", SERVICE_NAME):
            await self.health.set(name, status)

    async def settle_health(self) -> None:
        """Waits until health reflects every lifecycle change so far."""
        while self._health_updates:
            await asyncio.gather(*list(self._health_updates))

    async def stop(self, grace: float) -> None:
        if self._server is not None:
            await self._server.stop(grace)
            self._server = None
        if self._health_server is not None:
            await self._health_server.stop(0)
            self._health_server = None
