"""Session fixtures: the tiny checkpoint, the loaded model, engines and an in-process server."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from lychee_grpc.engine.config import EngineConfig
from lychee_grpc.engine.engine import Engine
from lychee_grpc.engine.model.loader import LoadedModel, load_model

from .helpers import ROOT, engine_config

E2E = ROOT / "tests" / "e2e"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Every test under tests/e2e is marked e2e; gpu tests are skipped without CUDA."""
    no_cuda = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if item.path.is_relative_to(E2E):
            item.add_marker(pytest.mark.e2e)
        if item.get_closest_marker("gpu") is not None and not torch.cuda.is_available():
            item.add_marker(no_cuda)

# The SDK suites run in environments of their own (`make test-http-clients`, tests/sdk/pytest.ini).
collect_ignore = ["sdk"]


@pytest.fixture(scope="session")
def tiny_model_dir() -> str:
    path = Path(os.environ.get("LYCHEE_TINY_MODEL", ROOT / ".cache" / "tiny-model"))
    if not (path / "config.json").exists():
        from lychee_grpc.engine.model.tiny_model import make_tiny_model

        make_tiny_model(path)
    return str(path)


@pytest.fixture(scope="session")
def loaded(tiny_model_dir) -> LoadedModel:
    """The tiny model in float32 on the CPU, on every machine: the tests compare arithmetic with
    transformers' at float32 tolerances. Tests marked `gpu` load their own CUDA copy."""
    return load_model(EngineConfig(model=tiny_model_dir, device="cpu"))


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
async def make_server(loaded, tiny_model_dir):
    """Apps (service, lifecycle, gRPC and HTTP on real loopback ports) over the tiny model; keyword
    arguments override the engine settings, `app=` the other AppConfig groups."""
    from lychee_grpc.app import App
    from lychee_grpc.config import AppConfig, GrpcConfig, HttpConfig, MetricsConfig

    apps = []

    async def factory(app: dict | None = None, **engine_overrides):
        engine_overrides.setdefault("max_batch_documents", 16)
        config = AppConfig(
            engine=engine_config(tiny_model_dir, **engine_overrides),
            grpc=GrpcConfig(host="127.0.0.1", port=0, max_connection_age_seconds=0),
            grace_seconds=2,
            # Metrics off: tests that scrape start an exporter on a free port (tests/e2e/ops_server.py).
            **{"http": HttpConfig(host="127.0.0.1", port=0), "metrics": MetricsConfig(port=0), **(app or {})},
        )
        instance = App(config, engine_factory=lambda cfg: Engine(cfg, loaded))
        await instance.start()
        await instance.load()
        apps.append(instance)
        return instance

    yield factory
    for instance in apps:
        await instance.stop()


@pytest.fixture
async def server(make_server):
    """The whole app over the tiny model."""
    return await make_server()


@pytest.fixture
async def client(server):
    from lychee_grpc.client import AsyncLycheeClient

    async with AsyncLycheeClient(f"127.0.0.1:{server.port}", timeout=60) as c:
        yield c
