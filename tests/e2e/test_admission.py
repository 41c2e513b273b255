"""Admission over a real port: past the concurrent-request or the queued-token bound a call is
refused at once with RESOURCE_EXHAUSTED and a RetryInfo delay; under the bounds all succeed."""

from __future__ import annotations

import asyncio
import threading
import time

import grpc
import pytest

from lychee_grpc.client import AsyncLycheeClient, make_query
from lychee_grpc.proto import lychee_pb2 as pb

from ..helpers import retry_delay
from .ops_server import ops_server

DOCS = ["vintage wash blue jeans coat", "organic green tea gift box", "denim jacket"]


async def test_past_the_concurrent_bound_a_call_is_refused_at_once_with_a_measured_delay(loaded, tiny_model_dir):
    async with ops_server(loaded, tiny_model_dir, max_concurrent_requests=1) as app, AsyncLycheeClient(
        f"127.0.0.1:{app.port}", timeout=30
    ) as client:
        for _ in range(3):  # measured request durations, so the delay is no longer the 1 s default
            await client.rerank("denim", DOCS)
        expected = app.service.admission.retry_after()
        assert expected != 1.0

        release = asyncio.Event()

        async def held_stream():
            yield pb.RerankStreamRequest(options=pb.StreamOptions(query=make_query("denim")))
            await release.wait()  # the stream, and so its permit, stays open until released

        call = client.stub.RerankStream(held_stream(), timeout=30)
        while app.service.admission.active == 0:
            await asyncio.sleep(0.01)

        started = time.perf_counter()
        with pytest.raises(grpc.RpcError) as refused:
            await client.rerank("denim", DOCS)
        assert time.perf_counter() - started < 2.0, "the refusal waited instead of answering at once"
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "limit is 1" in refused.value.details()
        assert retry_delay(refused.value) == pytest.approx(expected, abs=0.002)

        release.set()
        with pytest.raises(grpc.RpcError) as empty:  # the held stream sent no document
            async for _ in call:
                pass
        assert empty.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert len((await client.rerank("denim", DOCS)).results) == 3


async def test_past_the_queued_token_bound_a_call_is_refused_at_once_and_the_rest_succeed(loaded, tiny_model_dir):
    async with ops_server(loaded, tiny_model_dir, max_queue_tokens=123_456) as app, AsyncLycheeClient(
        f"127.0.0.1:{app.port}", timeout=30
    ) as client:
        scheduler = app.engine.scheduler
        assert scheduler.max_queue_tokens == 123_456  # the service's setting reaches the scheduler
        await client.rerank("denim", DOCS)
        tokens_per_request = scheduler._tokens_scored
        scheduler.max_queue_tokens = int(tokens_per_request * 1.5)

        # Hold the GPU thread: the first request's batch waits there, the second waits in the queue.
        gate = threading.Event()
        scheduler.submit_to_gpu(gate.wait, 20)  # bounded: a failing assertion cannot hang the test
        try:
            await _refuse_past_the_bound(client, scheduler, tokens_per_request, gate)
        finally:
            gate.set()


async def _refuse_past_the_bound(client, scheduler, tokens_per_request, gate):
    async def until(condition) -> None:
        deadline = time.monotonic() + 10
        while not condition() and time.monotonic() < deadline:
            await asyncio.sleep(0.005)
        assert condition()

    batches = scheduler._batch_id
    # Three other queries (each ends in a digit, so documents tokenize as for "denim"): each
    # request is computed, none answered by another's (score cache, single flight).
    first = asyncio.ensure_future(client.rerank("denim 1", DOCS))
    await until(lambda: scheduler._batch_id > batches)  # its batch waits for the GPU thread
    second = asyncio.ensure_future(client.rerank("denim 2", DOCS))
    await until(lambda: scheduler.queued_tokens == tokens_per_request)

    started = time.perf_counter()
    with pytest.raises(grpc.RpcError) as refused:
        await client.rerank("denim 3", DOCS)
    assert time.perf_counter() - started < 2.0
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "tokens waiting" in refused.value.details()
    delay = retry_delay(refused.value)
    assert 0.1 <= delay <= 60.0
    assert delay == pytest.approx(scheduler.drain_seconds(extra_tokens=tokens_per_request), abs=0.002)

    gate.set()
    assert [len(r.results) for r in await asyncio.gather(first, second)] == [3, 3]
    assert scheduler.queued_tokens == 0


async def test_under_both_bounds_concurrent_calls_all_succeed(loaded, tiny_model_dir):
    async with ops_server(loaded, tiny_model_dir, max_concurrent_requests=64, max_queue_tokens=1_000_000) as app, \
            AsyncLycheeClient(f"127.0.0.1:{app.port}", timeout=30) as client:
        results = await asyncio.gather(*(client.rerank(f"query {k}", DOCS) for k in range(24)))
        assert all(len(r.results) == 3 for r in results)
        assert app.service.admission.refused == 0


async def test_model_info_reports_the_admission_bounds_and_default_truncation(loaded, tiny_model_dir):
    async with ops_server(loaded, tiny_model_dir, max_concurrent_requests=7, max_queue_tokens=4321,
                          default_truncation="end") as app, \
            AsyncLycheeClient(f"127.0.0.1:{app.port}", timeout=30) as client:
        limits = (await client.model_info()).limits
        assert limits.max_concurrent_requests == 7
        assert limits.max_queue_tokens == 4321
        assert limits.default_truncation == pb.TRUNCATION_END
