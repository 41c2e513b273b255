"""Session fixtures: the tiny checkpoint, the loaded model, engines and an in-process server."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from lychee_grpc.engine.config import EngineConfig
from lychee_grpc.engine.engine import Engine
from lychee_grpc.engine.model.loader import LoadedModel, load_model

from .helpers import engine_config

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def tiny_model_dir() -> str:
    path = Path(os.environ.get("LYCHEE_TINY_MODEL", ROOT / ".cache" / "tiny-model"))
    if not (path / "config.json").exists():
        from lychee_grpc.engine.model.tiny_model import make_tiny_model

        make_tiny_model(path)
    return str(path)


@pytest.fixture(scope="session")
def loaded(tiny_model_dir) -> LoadedModel:
    return load_model(EngineConfig(model=tiny_model_dir))


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
    """An in-process server on a real loopback port, over the tiny model."""
    from lychee_grpc.server import LycheeServer, ServerConfig

    srv = LycheeServer(
        engine_config(tiny_model_dir, max_batch_documents=16),
        ServerConfig(host="127.0.0.1", port=0, grace_seconds=2, max_connection_age_seconds=0),
        engine_factory=lambda cfg: Engine(cfg, loaded),
    )
    await srv.start()
    await srv.load()
    yield srv
    await srv.stop()


@pytest.fixture
async def client(server):
    from lychee_grpc.client import AsyncLycheeClient

    async with AsyncLycheeClient(f"127.0.0.1:{server.port}", timeout=60) as c:
        yield c
