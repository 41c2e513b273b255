"""The plaintext health-only port (--health-port): kubelet gRPC probes get the server's health while
the main port demands mutual TLS, and nothing but health is reachable through it."""

from __future__ import annotations

import socket

import grpc
import pytest
import trustme
from grpc_health.v1 import health_pb2, health_pb2_grpc

from lychee_grpc.app import App
from lychee_grpc.config import AppConfig, GrpcConfig, HttpConfig, MetricsConfig, SecurityConfig
from lychee_grpc.engine.engine import Engine
from lychee_grpc.proto import lychee_pb2 as pb
from lychee_grpc.proto import lychee_pb2_grpc as pb_grpc

from ..helpers import engine_config
from ..tls import write_leaf

SERVICE = "lychee.v1.RerankService"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
async def mtls_app(loaded, tiny_model_dir, tmp_path):
    pems = write_leaf(trustme.CA(), tmp_path, "server")
    config = AppConfig(
        engine=engine_config(tiny_model_dir, max_batch_documents=16),
        grpc=GrpcConfig(host="127.0.0.1", port=0, max_connection_age_seconds=0, health_port=free_port()),
        metrics=MetricsConfig(port=0), http=HttpConfig(enabled=False),
        security=SecurityConfig(tls_cert=str(pems.cert), tls_key=str(pems.key), tls_client_ca=str(pems.ca)),
        grace_seconds=1,
    )
    app = App(config, engine_factory=lambda cfg: Engine(cfg, loaded))
    await app.start()
    yield app
    await app.stop()


async def check(port: int, service: str) -> int:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service),
                                                                timeout=20)
    return reply.status


async def test_health_port_follows_the_lifecycle_in_plaintext_beside_a_mutual_tls_port(mtls_app):
    port = mtls_app.grpc.health_port
    assert port == mtls_app.config.grpc.health_port
    assert await check(port, SERVICE) == health_pb2.HealthCheckResponse.NOT_SERVING  # still loading
    await mtls_app.load()
    for service in ("", SERVICE):
        assert await check(port, service) == health_pb2.HealthCheckResponse.SERVING
    # The main port still refuses a plaintext client.
    async with grpc.aio.insecure_channel(f"127.0.0.1:{mtls_app.port}") as channel:
        with pytest.raises(grpc.RpcError) as refused:
            await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
    assert refused.value.code() is grpc.StatusCode.UNAVAILABLE
    # Draining (SIGTERM) shows on the health port too, so the pod leaves the Services.
    mtls_app.lifecycle.drain()
    await mtls_app.grpc.settle_health()
    assert await check(port, SERVICE) == health_pb2.HealthCheckResponse.NOT_SERVING


async def test_health_port_serves_nothing_but_health(mtls_app):
    await mtls_app.load()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{mtls_app.grpc.health_port}") as channel:
        with pytest.raises(grpc.RpcError) as caught:
            await pb_grpc.RerankServiceStub(channel).GetModelInfo(pb.GetModelInfoRequest(), timeout=20)
    assert caught.value.code() is grpc.StatusCode.UNIMPLEMENTED


def test_health_port_is_off_by_default():
    assert AppConfig().grpc.health_port == 0
