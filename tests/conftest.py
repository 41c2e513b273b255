"""Session fixtures: the tiny checkpoint, the loaded model, engines and an in-process server."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from lychee_grpc.engine.config import EngineConfig
from lychee_grpc.engine.engine import Engine
from lychee_grpc.engine.images import ImageLimits
from lychee_grpc.engine.loader import LoadedModel, load_model
from lychee_grpc.engine.prepare import TextLimits

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def tiny_model_dir() -> str:
    path = Path(os.environ.get("LYCHEE_TINY_MODEL", ROOT / ".cache" / "tiny-model"))
    if not (path / "config.json").exists():
        from lychee_grpc.engine.tiny_model import make_tiny_model

        make_tiny_model(path)
    return str(path)


@pytest.fixture(scope="session")
def loaded(tiny_model_dir) -> LoadedModel:
    return load_model(EngineConfig(model=tiny_model_dir))


def engine_config(model: str, **overrides) -> EngineConfig:
    base = dict(
        model=model,
        max_documents_per_request=150,
        text_limits=TextLimits(max_tokens_per_document=512, max_query_tokens=512, max_instruction_tokens=64),
        image_limits=ImageLimits(max_bytes=2 * 1024 * 1024, max_pixels=4_000_000),
        warmup=False,
    )
    base.update(overrides)
    return EngineConfig(**base)


@pytest.fixture
async def make_engine(loaded, tiny_model_dir):
    """Engines over the shared tiny model, with per-test scheduler settings."""
    engines: list[Engine] = []

    async def factory(**overrides) -> Engine:
        engine = Engine(engine_config(tiny_model_dir, **overrides), loaded)
        await engine.start()
        engines.append(engine)
        return engine

    yield factory
    for engine in engines:
        await engine.stop()


@pytest.fixture
async def server(loaded, tiny_model_dir):
    """The whole app (service, lifecycle, gRPC on a real loopback port) over the tiny model."""
    from lychee_grpc.app import App
    from lychee_grpc.config import AppConfig, GrpcConfig, MetricsConfig

    config = AppConfig(
        engine=engine_config(tiny_model_dir, max_batch_documents=16),
        grpc=GrpcConfig(host="127.0.0.1", port=0, max_connection_age_seconds=0),
        metrics=MetricsConfig(port=0),  # tests that scrape start their own exporter on a free port
        grace_seconds=2,
    )
    app = App(config, engine_factory=lambda cfg: Engine(cfg, loaded))
    await app.start()
    await app.load()
    yield app
    await app.stop()


@pytest.fixture
async def client(server):
    from lychee_grpc.client import AsyncLycheeClient

    async with AsyncLycheeClient(f"127.0.0.1:{server.port}", timeout=60) as c:
        yield c
