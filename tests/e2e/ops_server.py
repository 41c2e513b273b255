"""An App over the tiny model with chosen settings, for the operations tests."""

from __future__ import annotations

import dataclasses
import socket
from contextlib import asynccontextmanager

from lychee_grpc.app import App
from lychee_grpc.config import AppConfig, GrpcConfig, HttpConfig, LogConfig, MetricsConfig
from lychee_grpc.engine.engine import Engine
from lychee_grpc.service.config import ServiceConfig

from ..helpers import engine_config


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@asynccontextmanager
async def ops_server(loaded, model_dir: str, metrics_port: int = 0, engine: dict | None = None, **service):
    config = AppConfig(
        engine=engine_config(model_dir, max_batch_documents=16, **(engine or {})),
        service=dataclasses.replace(ServiceConfig(), **service),
        grpc=GrpcConfig(host="127.0.0.1", port=0, max_connection_age_seconds=0),
        http=HttpConfig(host="127.0.0.1", port=0),
        metrics=MetricsConfig(host="127.0.0.1", port=metrics_port),
        log=LogConfig(),
        grace_seconds=2,
    )
    app = App(config, engine_factory=lambda cfg: Engine(cfg, loaded))
    await app.start()
    await app.load()
    try:
        yield app
    finally:
        await app.stop()
