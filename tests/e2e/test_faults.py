"""Faults: cancellation mid-batch, deadlines expiring in the queue and in a batch, out-of-memory
splits, a dead scheduler (in process and in a server process), SIGTERM with 50 calls in flight."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2

from lychee_grpc.app import App
from lychee_grpc.client import AsyncLycheeClient, LycheeClient, make_request
from lychee_grpc.config import AppConfig, GrpcConfig, HttpConfig, MetricsConfig
from lychee_grpc.engine.engine import Engine
from lychee_grpc.engine.faults import NoFaults
from lychee_grpc.lifecycle import State

from ..fault_server import GpuWorkerDies
from ..helpers import (
    ROOT,
    TITLES,
    OutOfMemoryAbove,
    engine_config,
    free_port,
    health_status,
    retry_delay,
    slow_batches,
    stats_of,
)

HANG = 30  # no call in these tests may take longer: a hang fails instead of blocking CI


@pytest.fixture
async def one_per_batch(loaded, tiny_model_dir):
    """An app scoring one document per batch, so that a request spans many batches."""
    config = AppConfig(engine=engine_config(tiny_model_dir, max_batch_documents=1),
                       grpc=GrpcConfig(host="127.0.0.1", port=0, max_connection_age_seconds=0),
                       http=HttpConfig(enabled=False), metrics=MetricsConfig(port=0), grace_seconds=2)
    app = App(config, engine_factory=lambda cfg: Engine(cfg, loaded))
    await app.start()
    await app.load()
    async with AsyncLycheeClient(f"127.0.0.1:{app.port}", timeout=HANG) as client:
        yield app, client
    await app.stop()


async def test_a_stream_cancelled_mid_batch_stops_scoring_and_the_server_carries_on(one_per_batch):
    app, client = one_per_batch
    engine = app.engine
    slow_batches(engine, 0.01)
    before = stats_of(engine).documents_scored
    received = 0
    call = client.rerank_stream("denim", [[f"title {i}" for i in range(150)]])
    async for _ in call:
        received += 1
        if received == 5:
            break
    call.cancel()
    await asyncio.sleep(0.3)
    assert stats_of(engine).documents_scored - before < 150
    assert stats_of(engine).queue_documents == 0 and app.lifecycle.in_flight == 0
    assert len((await client.rerank("denim", TITLES)).results) == len(TITLES)


async def test_a_deadline_expiring_in_the_queue_is_deadline_exceeded_and_its_documents_dropped(one_per_batch):
    app, client = one_per_batch
    engine = app.engine
    slow_batches(engine, 0.01)
    ahead = asyncio.ensure_future(client.stub.Rerank(make_request("denim", [f"t {i}" for i in range(100)]),
                                                     timeout=HANG))
    await asyncio.sleep(0.1)  # the first request fills the queue
    dropped = sum(stats_of(engine).documents_dropped.values())
    started = time.monotonic()
    with pytest.raises(grpc.RpcError) as info:
        await client.stub.Rerank(make_request("jacket", TITLES * 4), timeout=0.3)
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert time.monotonic() - started < 2
    assert len((await ahead).results) == 100  # the request ahead is unharmed
    assert sum(stats_of(engine).documents_dropped.values()) > dropped
    assert stats_of(engine).queue_documents == 0 and app.lifecycle.in_flight == 0


async def test_a_deadline_expiring_during_a_requests_batches_ends_it_promptly(one_per_batch):
    app, client = one_per_batch
    slow_batches(app.engine, 0.04)  # 150 documents take ~6 s; the deadline is 0.5 s
    started = time.monotonic()
    with pytest.raises(grpc.RpcError) as info:
        await client.stub.Rerank(make_request("denim", [f"title {i}" for i in range(150)]), timeout=0.5)
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert time.monotonic() - started < 2
    await asyncio.sleep(0.3)
    assert stats_of(app.engine).queue_documents == 0
    assert len((await client.rerank("denim", TITLES)).results) == len(TITLES)


async def test_an_out_of_memory_batch_is_split_and_every_request_succeeds(make_server):
    from lychee_grpc.service.config import ServiceConfig

    server = await make_server(app={"service": ServiceConfig(score_cache_bytes=0)})  # each request computed
    engine = server.engine
    async with AsyncLycheeClient(f"127.0.0.1:{server.port}", timeout=60) as client:
        expected = {r.index: r.score for r in (await client.rerank("denim", TITLES * 4)).results}
        engine.inject_faults(OutOfMemoryAbove(3))  # the "GPU" holds at most 3 sequences at once
        splits = stats_of(engine).oom_splits
        results = await asyncio.gather(*(client.rerank("denim", TITLES * 4) for _ in range(3)))
    for resp in results:
        assert {r.index: r.score for r in resp.results} == pytest.approx(expected, abs=1e-5)
    assert stats_of(engine).oom_splits > splits


async def test_a_document_the_gpu_cannot_hold_even_alone_is_resource_exhausted_and_the_server_carries_on(server,
                                                                                                      client):
    server.engine.inject_faults(OutOfMemoryAbove(0))  # no pass fits, not even one document on a drained GPU
    with pytest.raises(grpc.RpcError) as info:
        await asyncio.wait_for(client.rerank("denim", TITLES[:2]), HANG)
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "documents[" in info.value.details() and "GPU memory left cannot hold" in info.value.details()
    assert retry_delay(info.value) > 0
    server.engine.inject_faults(NoFaults())
    assert len((await asyncio.wait_for(client.rerank("denim", TITLES), HANG)).results) == len(TITLES)
    assert stats_of(server.engine).queue_documents == 0


async def test_a_dead_scheduler_fails_waiting_calls_and_turns_health_not_serving(server, client):
    server.engine.inject_faults(GpuWorkerDies())
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{server.port}")
    with pytest.raises(grpc.RpcError) as info:
        await asyncio.wait_for(client.rerank("denim", TITLES), HANG)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    assert server.lifecycle.state is State.FAILED
    from grpc_health.v1 import health_pb2_grpc

    health = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
    assert health.status == health_pb2.HealthCheckResponse.NOT_SERVING
    with pytest.raises(grpc.RpcError) as info:  # later calls are refused at once, not queued forever
        await asyncio.wait_for(client.rerank("denim", TITLES), HANG)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    await channel.close()


async def test_a_scheduler_task_that_raises_fails_the_lifecycle(server, client):
    class LoopBreaks(NoFaults):
        def batch_formed(self, documents: int) -> None:
            raise RuntimeError("injected: the scheduler's loop broke")

    server.engine.inject_faults(LoopBreaks())
    with pytest.raises(grpc.RpcError) as info:
        await asyncio.wait_for(client.rerank("denim", TITLES), HANG)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    assert server.lifecycle.state is State.FAILED
    assert "the engine died" in server.lifecycle.failure


def start_server(tiny_model_dir: str, *args: str, fault: str | None = None) -> tuple[subprocess.Popen, int]:
    port = free_port()
    serve = ["--model", tiny_model_dir, "--host", "127.0.0.1", "--port", str(port), "--http", "false",
             "--metrics-port", "0", *args]
    cmd = ([sys.executable, "-m", "tests.fault_server", fault, *serve] if fault else
           [sys.executable, "-m", "lychee_grpc.cli", "serve", *serve])
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=dict(os.environ, PYTHONUNBUFFERED="1"))
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if health_status(channel) == health_pb2.HealthCheckResponse.SERVING:
                channel.close()
                return proc, port
        except grpc.RpcError:
            pass
        if proc.poll() is not None:
            break
        time.sleep(0.2)
    proc.kill()
    raise AssertionError(f"server never became SERVING:\n{proc.stdout.read()}")


def test_a_dead_gpu_worker_makes_the_server_process_exit_non_zero(tiny_model_dir):
    proc, port = start_server(tiny_model_dir, "--warmup", "false", fault="dead-worker")
    try:
        with LycheeClient(f"127.0.0.1:{port}", timeout=HANG) as client:
            with pytest.raises(grpc.RpcError) as info:
                client.rerank("denim", TITLES)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        assert proc.wait(HANG) != 0  # so Kubernetes restarts it
        assert "serving failed" in proc.stdout.read()
    finally:
        if proc.poll() is None:
            proc.kill()


def test_sigterm_with_50_calls_in_flight_completes_or_refuses_each_and_exits_within_the_grace(tiny_model_dir):
    grace = 10
    proc, port = start_server(tiny_model_dir, "--max-batch-documents", "4", "--grace-seconds", str(grace))
    outcomes: list[str] = []
    lock = threading.Lock()

    def call(k: int) -> None:
        try:
            with LycheeClient(f"127.0.0.1:{port}", timeout=HANG) as client:
                resp = client.rerank(f"denim {k}", [f"title {k} {i}" for i in range(40)])
            outcome = "ok" if len(resp.results) == 40 else "short"
        except grpc.RpcError as err:
            outcome = err.code().name
        with lock:
            outcomes.append(outcome)

    try:
        threads = [threading.Thread(target=call, args=(k,)) for k in range(50)]
        for t in threads:
            t.start()
        time.sleep(0.5)
        proc.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        for t in threads:
            t.join(HANG)
        assert not any(t.is_alive() for t in threads), "a call hung"
        assert proc.wait(grace + 5) == 0
        assert time.monotonic() - signalled < grace + 5
        assert len(outcomes) == 50
        assert set(outcomes) <= {"ok", "UNAVAILABLE"}, outcomes
        assert "ok" in outcomes
    finally:
        if proc.poll() is None:
            proc.kill()


def test_clients_cancelling_streams_mid_way_leave_the_server_process_serving(tiny_model_dir):
    """A stream cancelled by its client after its first result, again and again (a Go client whose
    callback fails does this): the server process keeps serving. It once died of SIGSEGV here, in
    the interceptor's after-call step reading the cancelled call's peer."""
    proc, port = start_server(tiny_model_dir)
    try:
        docs = [f"variant {k} denim" for k in range(12)]
        with LycheeClient(f"127.0.0.1:{port}", timeout=10) as client:
            for attempt in range(20):
                call = client.rerank_stream("variant 3", [docs[j:j + 2] for j in range(0, 12, 2)])
                next(iter(call))
                call.cancel()
                time.sleep(0.05)
                assert proc.poll() is None, f"the server exited with {proc.returncode} after {attempt + 1} cancels"
            assert len(client.rerank("denim", TITLES).results) == len(TITLES)
        assert proc.poll() is None
    finally:
        proc.terminate()
        proc.wait(30)
