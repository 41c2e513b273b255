"""An App over the tiny model with chosen settings, for the operations tests."""

from __future__ import annotations

import dataclasses
from contextlib import asynccontextmanager

from lychee_grpc.app import App
from lychee_grpc.config import AppConfig, GrpcConfig, HttpConfig, LogConfig, MetricsConfig
from lychee_grpc.engine.engine import Engine
from lychee_grpc.service.config import ServiceConfig

from ..helpers import engine_config, free_port


@asynccontextmanager
async def ops_server(loaded, model_dir: str, metrics_port: int | None = None, engine: dict | None = None, **service):
    """Metrics on `metrics_port` (None: a free port; 0: off, and then nothing records them)."""
    config = AppConfig(
        engine=engine_config(model_dir, max_batch_documents=16, **(engine or {})),
        service=dataclasses.replace(ServiceConfig(), **service),
        grpc=GrpcConfig(host="127.0.0.1", port=0, max_connection_age_seconds=0),
        http=HttpConfig(host="127.0.0.1", port=0),
        metrics=MetricsConfig(host="127.0.0.1", port=free_port() if metrics_port is None else metrics_port),
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
