"""A server on a loopback port for the fuzz tests (its own event loop on a thread, so that
hypothesis drives it with plain blocking calls), and the record of every case tried."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections import Counter
from pathlib import Path

import grpc
import pytest

from lychee_grpc.client import make_request
from lychee_grpc.proto import lychee_pb2_grpc as pb_grpc

from ..helpers import ROOT, engine_config
from .cases import REFERENCE, TIME_BOUND

REPORT = ROOT / ".cache" / "reliability" / "fuzz.json"


class Fuzz:
    def __init__(self, app, loop: asyncio.AbstractEventLoop):
        self.app = app
        self.loop = loop
        self.channel = grpc.insecure_channel(f"127.0.0.1:{app.port}", options=[
            ("grpc.max_send_message_length", 256 << 20), ("grpc.max_receive_message_length", 256 << 20)])
        self.stub = pb_grpc.RerankServiceStub(self.channel)
        self.statuses: Counter[str] = Counter()
        self.latencies: dict[str, list[float]] = {}
        self.reference = self.reference_scores()

    def reference_scores(self) -> list[tuple[int, float]]:
        resp = self.stub.Rerank(make_request(*REFERENCE), timeout=TIME_BOUND)
        return sorted((r.index, r.score) for r in resp.results)

    def record(self, rpc: str, code: grpc.StatusCode, seconds: float) -> None:
        self.statuses[f"{rpc} {code.name}"] += 1
        self.latencies.setdefault(rpc, []).append(seconds)
        assert seconds < TIME_BOUND, f"{rpc} took {seconds:.1f} s"

    def assert_still_serving_identically(self) -> None:
        assert self.reference_scores() == self.reference, "the reference request's scores changed"

    def report(self) -> dict:
        def pct(values: list[float], q: float) -> float:
            ordered = sorted(values)
            return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1e3, 1)

        return {
            "cases": sum(self.statuses.values()),
            "statuses": dict(sorted(self.statuses.items())),
            "latency_ms": {rpc: {"p50": pct(v, 0.5), "p99": pct(v, 0.99), "max": pct(v, 1.0)}
                           for rpc, v in sorted(self.latencies.items())},
        }


@pytest.fixture(scope="session")
def fuzz(loaded, tiny_model_dir):
    from lychee_grpc.app import App
    from lychee_grpc.config import AppConfig, GrpcConfig, HttpConfig, MetricsConfig
    from lychee_grpc.engine.engine import Engine

    config = AppConfig(http=HttpConfig(host="127.0.0.1", port=0), metrics=MetricsConfig(port=0),
                       engine=engine_config(tiny_model_dir, max_batch_documents=16),
                       grpc=GrpcConfig(host="127.0.0.1", port=0, max_connection_age_seconds=0), grace_seconds=2)
    app = App(config, engine_factory=lambda cfg: Engine(cfg, loaded))
    loop = asyncio.new_event_loop()
    ready = threading.Event()

    def serve() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(app.start())
        loop.run_until_complete(app.load())
        ready.set()
        loop.run_forever()

    thread = threading.Thread(target=serve, name="fuzz-server", daemon=True)
    thread.start()
    assert ready.wait(120), "the fuzz server did not start"
    started = time.perf_counter()
    state = Fuzz(app, loop)
    yield state
    report = state.report() | {"seconds": round(time.perf_counter() - started, 1)}
    REPORT.parent.mkdir(parents=True, exist_ok=True)
    Path(REPORT).write_text(json.dumps(report, indent=2) + "\n")
    print("\nfuzz:", json.dumps(report))
    state.channel.close()
    asyncio.run_coroutine_threadsafe(app.stop(), loop).result(60)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)
