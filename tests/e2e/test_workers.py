"""Two engine worker processes behind one endpoint, on the CPU and the tiny model: the same
scores as one engine, requests spread over both, and a killed worker handled (NOT_SERVING, exit
non-zero)."""

from __future__ import annotations

import asyncio
import math
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from lychee_grpc.app import App
from lychee_grpc.client import AsyncLycheeClient
from lychee_grpc.config import AppConfig, GrpcConfig, HttpConfig, MetricsConfig, WorkersConfig
from lychee_grpc.engine.model.reference import reference_logits
from lychee_grpc.engine.prompt.template import DEFAULT_INSTRUCTION
from lychee_grpc.engine.types import ImagePart, TextPart
from lychee_grpc.proto import lychee_pb2 as pb

from ..helpers import engine_config, free_port, noise_image

TITLES = [f"{word} denim jacket size {i}" for i, word in enumerate(["vintage", "slim", "blue", "washed"] * 5)]


@pytest.fixture(scope="module")
async def pool_app(tiny_model_dir):
    config = AppConfig(
        engine=engine_config(tiny_model_dir, max_batch_documents=8),
        grpc=GrpcConfig(host="127.0.0.1", port=0, max_connection_age_seconds=0),
        http=HttpConfig(enabled=False),
        metrics=MetricsConfig(host="127.0.0.1", port=free_port()),  # the workers' timings are recorded
        workers=WorkersConfig(devices="cpu,cpu", split_min_documents=4),
        grace_seconds=5,
    )
    app = App(config)
    await app.start()
    await app.load()
    yield app
    await app.stop()


async def test_two_workers_give_the_reference_scores_and_share_the_work(pool_app, loaded):
    pool = pool_app.engine_client
    images = [noise_image(48, 48, seed=s) for s in range(3)]
    docs = [*TITLES, [images[0], "photo"], [images[1]], [images[0], "same photo"], [images[2]]]
    async with AsyncLycheeClient(f"127.0.0.1:{pool_app.port}", timeout=120) as client:
        resp = await client.rerank("retro denim jacket", docs)
        info = await client.model_info()
    assert sorted(r.index for r in resp.results) == list(range(len(docs)))
    parts = [(TextPart(t),) for t in TITLES] + [
        (ImagePart(images[0]), TextPart("photo")), (ImagePart(images[1]),),
        (ImagePart(images[0]), TextPart("same photo")), (ImagePart(images[2]),),
    ]
    query = (TextPart("retro denim jacket"),)
    ref = reference_logits(loaded.model, loaded.processor, DEFAULT_INSTRUCTION, query, parts)
    for r in resp.results:
        assert r.score == pytest.approx(1 / (1 + math.exp(-float(ref[r.index]))), abs=1e-4)
    assert set(pool.routed) == {"cpu:0", "cpu:1"} and all(n > 0 for n in pool.routed.values())
    await asyncio.sleep(0.6)  # the workers' stats snapshots
    exposition = pool_app.metrics.exposition().decode()
    for device in ("cpu:0", "cpu:1"):
        line = next(x for x in exposition.splitlines()
                    if x.startswith(f'lychee_worker_batches_total{{device="{device}"}}'))
        assert float(line.split()[-1]) > 0
    assert any(x.startswith("lychee_inference_duration_seconds_count") and float(x.split()[-1]) > 0
               for x in exposition.splitlines())  # the workers' batch timings reach the server's metrics
    assert info.workers == 2 and list(info.devices) == ["cpu", "cpu"]
    assert resp.usage.prompt_tokens > resp.usage.computed_tokens > 0


async def test_two_workers_report_errors_with_the_requests_indices(pool_app):
    docs = [*TITLES[:6], "", *TITLES[6:12], [b"not an image"]]
    async with AsyncLycheeClient(f"127.0.0.1:{pool_app.port}", timeout=120) as client:
        with pytest.raises(grpc.RpcError) as info:
            await client.rerank("denim", docs)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "documents[6]" in info.value.details() and "documents[13]" in info.value.details()
        ok = await client.rerank("denim", TITLES)  # nothing left behind
        assert len(ok.results) == len(TITLES)


async def test_a_stream_spread_over_two_workers_keeps_arrival_indices(pool_app):
    async with AsyncLycheeClient(f"127.0.0.1:{pool_app.port}", timeout=120) as client:
        events = [e async for e in client.rerank_stream("denim", [TITLES[:10], TITLES[10:]])]
    scored = [e.scored for e in events if e.HasField("scored")]
    assert sorted(s.index for s in scored) == list(range(len(TITLES)))
    ranking = events[-1].ranking
    assert [r.index for r in ranking.results] == [
        s.index for s in sorted(scored, key=lambda s: (-s.score, -s.logit, s.index))
    ]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker_pids(pid: int) -> list[int]:
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    out = []
    for child in map(int, children):
        cmdline = Path(f"/proc/{child}/cmdline").read_bytes().replace(b"\0", b" ")
        if b"spawn_main" in cmdline:
            out.append(child)
    return out


def test_a_killed_worker_turns_health_not_serving_and_the_server_exits_non_zero(tiny_model_dir):
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "lychee_grpc", "serve", "--model", tiny_model_dir, "--host", "127.0.0.1",
         "--port", str(port), "--devices", "cpu,cpu", "--warmup", "false", "--grace-seconds", "5", "--http", "false",
         "--metrics-port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=dict(os.environ, PYTHONUNBUFFERED="1"),
    )
    try:
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        health = health_pb2_grpc.HealthStub(channel)
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            try:
                if health.Check(health_pb2.HealthCheckRequest(), timeout=2).status == 1:
                    break
            except grpc.RpcError:
                pass
            time.sleep(0.3)
        else:
            pytest.fail("the server never became SERVING")
        workers = _worker_pids(proc.pid)
        assert len(workers) == 2
        os.kill(workers[1], signal.SIGKILL)
        code = proc.wait(60)
        assert code != 0
        output = proc.stdout.read()
        assert "died" in output
    finally:
        if proc.poll() is None:
            proc.kill()


async def test_model_info_lists_every_device(pool_app):
    async with AsyncLycheeClient(f"127.0.0.1:{pool_app.port}", timeout=60) as client:
        info = await client.stub.GetModelInfo(pb.GetModelInfoRequest())
    assert info.workers == 2 and len(info.devices) == 2
    assert info.token_cache_capacity_bytes == 2 * (256 << 20)  # each worker's token cache, summed


async def test_two_workers_answer_a_repeated_request_from_the_score_cache_bit_for_bit(pool_app):
    """The cache sits above the pool: the repeat reaches no worker (nothing computed, no IPC),
    unary and stream alike."""
    titles = [f"{t} (cache)" for t in TITLES]
    async with AsyncLycheeClient(f"127.0.0.1:{pool_app.port}", timeout=120) as client:
        first = await client.rerank("linen sofa", titles)
        await asyncio.sleep(0.6)  # the workers' stats snapshots
        scored_before = sum(s.documents_scored for s in pool_app.engine_client.stats())
        second = await client.rerank("linen sofa", titles)
        events = [e async for e in client.rerank_stream("linen sofa", [titles[:7], titles[7:]])]
        await asyncio.sleep(0.6)  # the workers' stats snapshots
        scored_after = sum(s.documents_scored for s in pool_app.engine_client.stats())
    assert not any(r.cached for r in first.results) and all(r.cached for r in second.results)
    assert sorted((r.index, r.score, r.logit) for r in second.results) == sorted(
        (r.index, r.score, r.logit) for r in first.results)
    assert second.usage.computed_tokens == 0 and second.usage.cached_documents == len(titles)
    scored = [e.scored for e in events if e.HasField("scored")]
    assert all(s.cached for s in scored) and sorted((s.index, s.score) for s in scored) == sorted(
        (r.index, r.score) for r in first.results)
    assert scored_after == scored_before


async def test_explain_over_two_workers_scores_each_masked_cell_as_its_picture_alone(pool_app):
    from .test_explain import DOCUMENT, QUERY, occluded

    async with AsyncLycheeClient(f"127.0.0.1:{pool_app.port}", timeout=120) as client:
        resp = await client.stub.Explain(pb.ExplainRequest(query=QUERY, document=DOCUMENT, grid_size=2), timeout=120)
        cells = [f for f in resp.fragments if f.width > 0]
        assert len(cells) == 4
        for f in cells:  # the masked pixels crossed the pipe to a worker: each equals its PNG's score
            alone = (await client.rerank(QUERY, [pb.Document(id="p", parts=occluded(DOCUMENT.parts, f))])).results[0]
            assert f.occluded_score == pytest.approx(alone.score, abs=1e-4), f
