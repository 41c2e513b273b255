"""End to end over a real loopback port: Rerank, RerankStream, GetModelInfo, validation,
cancellation, deadlines, health and reflection."""

from __future__ import annotations

import asyncio
import gc
import math
import threading

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from lychee_grpc.app import App
from lychee_grpc.client import AsyncLycheeClient, image, make_request, text
from lychee_grpc.config import AppConfig, GrpcConfig, HttpConfig, MetricsConfig
from lychee_grpc.engine.engine import Engine
from lychee_grpc.engine.model.reference import reference_logits
from lychee_grpc.engine.prompt.template import DEFAULT_INSTRUCTION
from lychee_grpc.engine.types import TextPart
from lychee_grpc.proto import lychee_pb2 as pb
from lychee_grpc.proto import lychee_pb2_grpc as pb_grpc

from ..helpers import (
    TITLES,
    engine_config,
    noise_image,
    png_declaring,
    slow_batches,
    stats_of,
    violated_fields,
)


async def test_rerank_returns_every_document_best_first(client, loaded):
    resp = await client.rerank("retro denim jacket", TITLES)
    assert sorted(r.index for r in resp.results) == list(range(len(TITLES)))
    scores = [r.score for r in resp.results]
    assert scores == sorted(scores, reverse=True)
    assert all(0.0 <= s <= 1.0 for s in scores)
    ref = reference_logits(loaded.model, loaded.processor, DEFAULT_INSTRUCTION, (TextPart("retro denim jacket"),),
                           [(TextPart(t),) for t in TITLES])
    for r in resp.results:
        assert r.id == str(r.index)
        assert r.score == pytest.approx(1 / (1 + math.exp(-float(ref[r.index]))), abs=1e-4)
        assert r.logit == pytest.approx(float(ref[r.index]), abs=1e-3)
        expected_band = (pb.RELEVANCE_BAND_STRONG if r.score >= 0.75 else
                         pb.RELEVANCE_BAND_MEDIUM if r.score >= 0.55 else pb.RELEVANCE_BAND_WEAK)
        assert r.band == expected_band
    assert resp.usage.prompt_tokens > resp.usage.computed_tokens > 0  # the prefix ran once
    assert resp.timings.total_ms >= resp.timings.inference_ms > 0
    assert resp.model


async def test_top_n_and_return_documents(client):
    full = await client.rerank("retro denim jacket", TITLES)
    top = await client.rerank("retro denim jacket", TITLES, top_n=2, return_documents=True)
    assert [r.index for r in top.results] == [r.index for r in full.results[:2]]
    for r in top.results:
        assert r.document.parts[0].text == TITLES[r.index]
    assert not full.results[0].HasField("document")


async def test_image_and_mixed_documents(client):
    img = noise_image(64, 64, seed=5)
    query = pb.Query(parts=[image(noise_image(56, 84, seed=6)), text("same style")])
    docs = [pb.Document(id="img", parts=[image(img)]),
            pb.Document(id="mixed", parts=[text("cotton tee"), image(img)]),
            pb.Document(id="text", parts=[text("cotton tee")])]
    resp = await client.rerank(query, docs)
    assert {r.id for r in resp.results} == {"img", "mixed", "text"}
    assert resp.usage.images == 3  # query image once, two document images
    # Other pairs (another instruction), the same images: their tower outputs come from the vision cache.
    again = await client.rerank(query, docs, instruction="Find products of the same style")
    assert again.usage.cached_images == 2 and not any(r.cached for r in again.results)
    # The same pairs: their scores come from the pair-score cache, unchanged.
    repeat = await client.rerank(query, docs)
    assert [(r.id, r.score) for r in repeat.results] == [(r.id, r.score) for r in resp.results]
    assert all(r.cached for r in repeat.results)


async def test_stream_scores_arrive_before_half_close_then_final_ranking(server, loaded):
    async with AsyncLycheeClient(f"127.0.0.1:{server.port}") as c:
        call = c.stub.RerankStream(timeout=60)
        await call.write(pb.RerankStreamRequest(options=pb.StreamOptions(query=pb.Query(parts=[text("denim")]),
                                                                         top_n=5)))
        scored: dict[int, float] = {}
        for chunk in range(10):
            docs = [pb.Document(id=f"c{chunk}-{k}", parts=[text(f"{TITLES[k % 5]} {chunk}")]) for k in range(10)]
            await call.write(pb.RerankStreamRequest(documents=docs))
            if chunk == 0:
                # Scores come back while the stream is still open.
                for _ in range(10):
                    msg = await call.read()
                    assert msg.WhichOneof("event") == "scored"
                    scored[msg.scored.index] = msg.scored.score
        await call.done_writing()
        final = None
        while (msg := await call.read()) is not grpc.aio.EOF:
            if msg.WhichOneof("event") == "scored":
                scored[msg.scored.index] = msg.scored.score
                assert msg.scored.id == f"c{msg.scored.index // 10}-{msg.scored.index % 10}"
            else:
                final = msg.ranking
        assert sorted(scored) == list(range(100))
        assert final is not None and len(final.results) == 5
        best = sorted(scored.items(), key=lambda kv: -kv[1])[:5]
        assert [r.score for r in final.results] == pytest.approx([s for _, s in best])
        assert final.usage.prompt_tokens > 0


async def test_stream_through_client_helper(client):
    events = [e async for e in client.rerank_stream("denim", [TITLES[:2], TITLES[2:]])]
    assert [e.WhichOneof("event") for e in events].count("scored") == len(TITLES)
    assert events[-1].WhichOneof("event") == "ranking"
    assert len(events[-1].ranking.results) == len(TITLES)


async def test_model_info(client, tiny_model_dir):
    info = await client.model_info()
    assert info.model == tiny_model_dir
    assert info.random_weights is True
    assert info.dtype == "float32" and info.attention_implementation in ("sdpa", "eager")
    assert info.devices == ["cpu"]
    assert info.limits.max_documents_per_request == 150
    assert info.band_thresholds.strong == pytest.approx(0.75)
    assert info.default_instruction == DEFAULT_INSTRUCTION
    assert info.batch_invariant is False


async def test_model_info_reports_the_batch_invariant_mode(make_server):
    srv = await make_server(batch_invariant=True)
    async with AsyncLycheeClient(f"127.0.0.1:{srv.port}") as c:
        assert (await c.model_info()).batch_invariant is True


BAD_REQUESTS = {
    "no query": (pb.RerankRequest(documents=[pb.Document(parts=[text("x")])]), "query.parts"),
    "no documents": (make_request("q", []), "documents"),
    "document without parts": (pb.RerankRequest(query=pb.Query(parts=[text("q")]), documents=[pb.Document()]),
                               "documents[0].parts"),
    "empty text": (make_request("q", ["fine", ""]), "documents[1].parts[0].text"),
    "blank query text": (make_request("  ", ["fine"]), "query.parts[0].text"),
    "part with neither": (pb.RerankRequest(query=pb.Query(parts=[text("q")]),
                                           documents=[pb.Document(parts=[pb.Part()])]), "documents[0].parts[0]"),
    "undecodable image": (make_request("q", [[b"not an image"]]), "documents[0].parts[0].image"),
    "oversized image": (make_request("q", ["ok", [b"\x89PNG" + b"\0" * (3 * 1024 * 1024)]]),
                        "documents[1].parts[0].image"),
    "decompression bomb": (make_request("q", [[png_declaring(30000, 30000)]]), "documents[0].parts[0].image"),
    "query image corrupt": (make_request([b"garbage"], ["x"]), "query.parts[0].image"),
    "too many documents": (make_request("q", ["d"] * 151), "documents"),
    "document too long": (make_request("q", ["word " * 2000]), "documents[0]"),
    "instruction too long": (make_request("q", ["d"], instruction="rank " * 200), "instruction"),
}


@pytest.mark.parametrize("name", list(BAD_REQUESTS))
async def test_invalid_requests_name_the_field(client, name):
    request, field = BAD_REQUESTS[name]
    with pytest.raises(grpc.RpcError) as info:
        await client.stub.Rerank(request, timeout=30)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in violated_fields(info.value), info.value.details()


async def test_invalid_stream_document_fails_the_stream_naming_its_index(client):
    with pytest.raises(grpc.RpcError) as info:
        async for _ in client.rerank_stream("denim", [["ok", "fine"], ["good", ""]]):
            pass
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "documents[3].parts[0].text" in violated_fields(info.value)


async def test_stream_without_options_is_invalid(client):
    async def requests():
        yield pb.RerankStreamRequest(documents=[pb.Document(parts=[text("x")])])

    with pytest.raises(grpc.RpcError) as info:
        async for _ in client.stub.RerankStream(requests(), timeout=10):
            pass
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "options" in violated_fields(info.value)


async def test_corrupt_image_leaves_concurrent_requests_unharmed(client):
    good = [client.rerank("denim", TITLES) for _ in range(3)]
    bad = client.rerank("denim", ["fine", [noise_image(40, 40)[:60]]])
    results = await asyncio.gather(*good, bad, return_exceptions=True)
    solo = await client.rerank("denim", TITLES)
    for r in results[:3]:
        assert [x.score for x in r.results] == pytest.approx([x.score for x in solo.results], abs=1e-6)
    assert isinstance(results[3], grpc.RpcError)
    assert results[3].code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "documents[1].parts[0].image" in violated_fields(results[3])


async def test_cancelled_rpc_documents_are_not_scored(server, client):
    engine = server.engine
    slow_batches(engine, 0.05)  # 16 documents per batch: 150 documents take ~0.5 s
    before = stats_of(engine).documents_scored
    call = client.stub.Rerank(make_request("denim", [f"title {i}" for i in range(150)]), timeout=30)
    for _ in range(1000):  # cancel once the documents are queued, however slow the machine
        stats = stats_of(engine)
        if stats.queue_documents or stats.documents_scored > before:
            break
        await asyncio.sleep(0.01)
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    for _ in range(1000):  # the batch being scored ends, the rest are dropped
        stats = stats_of(engine)
        if stats.queue_documents == 0 and sum(stats.documents_dropped.values()) > 0:
            break
        await asyncio.sleep(0.01)
    assert stats.documents_scored - before < 150 and sum(stats.documents_dropped.values()) > 0
    assert stats.queue_documents == 0


async def test_expired_deadline_returns_deadline_exceeded_without_running_the_model(server, client):
    engine = server.engine
    before = stats_of(engine).documents_scored
    with pytest.raises(grpc.RpcError) as info:
        await client.stub.Rerank(make_request("denim", TITLES * 20), timeout=0.001)
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    await asyncio.sleep(0.3)
    assert stats_of(engine).documents_scored == before
    ok = await client.rerank("denim", TITLES)  # the server carries on
    assert len(ok.results) == len(TITLES)


async def test_reflection_lists_the_service(server):
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)

        async def ask():
            yield reflection_pb2.ServerReflectionRequest(list_services="")

        names = []
        async for resp in stub.ServerReflectionInfo(ask()):
            names += [s.name for s in resp.list_services_response.service]
    assert "lychee.v1.RerankService" in names
    assert "grpc.health.v1.Health" in names


async def test_health_not_serving_until_loaded_then_serving_then_not_serving_on_stop(loaded, tiny_model_dir):
    gate = threading.Event()

    def factory(cfg):
        gate.wait(30)
        return Engine(cfg, loaded)

    srv = App(AppConfig(engine=engine_config(tiny_model_dir, warmup=True, max_batch_documents=8),
                        grpc=GrpcConfig(host="127.0.0.1", port=0, max_connection_age_seconds=0),
                        metrics=MetricsConfig(port=0), http=HttpConfig(enabled=False), grace_seconds=20),
              engine_factory=factory)
    await srv.start()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{srv.port}") as channel:
        health = health_pb2_grpc.HealthStub(channel)

        async def status(service: str) -> int:
            return (await health.Check(health_pb2.HealthCheckRequest(service=service))).status

        loading = asyncio.create_task(srv.load())
        for name in ("", "lychee.v1.RerankService"):
            assert await status(name) == health_pb2.HealthCheckResponse.NOT_SERVING
        with pytest.raises(grpc.RpcError) as info:
            await AsyncLycheeClient(f"127.0.0.1:{srv.port}").stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=5)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        gate.set()
        await loading
        for name in ("", "lychee.v1.RerankService"):
            assert await status(name) == health_pb2.HealthCheckResponse.SERVING
        assert gc.get_freeze_count() > 0  # what loading made is out of the full collections' way
        # Stopping with a request in flight: NOT_SERVING, new RPCs refused, the old one completes.
        slow_batches(srv.engine, 0.05)
        client = AsyncLycheeClient(f"127.0.0.1:{srv.port}")
        in_flight = asyncio.create_task(client.rerank("denim", [f"title {i}" for i in range(100)]))
        while stats_of(srv.engine).documents_scored == 0 or srv.lifecycle.in_flight == 0:
            await asyncio.sleep(0.01)
        stopping = asyncio.create_task(srv.stop())
        await asyncio.sleep(0.05)
        assert await status("") == health_pb2.HealthCheckResponse.NOT_SERVING
        assert await status("lychee.v1.RerankService") == health_pb2.HealthCheckResponse.NOT_SERVING
        assert not in_flight.done()
        with pytest.raises(grpc.RpcError) as info:  # a plain channel: no retry policy
            await pb_grpc.RerankServiceStub(channel).GetModelInfo(pb.GetModelInfoRequest(), timeout=5)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        assert len((await in_flight).results) == 100
        await stopping
        assert gc.get_freeze_count() == 0  # a stopped server's engine can be freed
        await client.close()


async def test_mixed_request_document_echo_keeps_images(client):
    img = noise_image(30, 30, seed=9)
    resp = await client.rerank("q", [["caption", img]], return_documents=True)
    assert resp.results[0].document.parts[1].image == img


async def test_cli_rerank_prints_a_ranked_table(server, capsys, tmp_path):
    from lychee_grpc import cli

    picture = tmp_path / "shoe.png"
    picture.write_bytes(noise_image(40, 40, seed=3))
    args = ["rerank", "--target", f"127.0.0.1:{server.port}", "--query", "denim",
            "--doc", "vintage jeans", "--doc", "green tea", "--doc-image", str(picture)]
    assert await asyncio.to_thread(cli.main, args) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:4] == ["rank", "score", "band", "index"]
    rows = [line.split() for line in lines[1:4]]
    assert [r[0] for r in rows] == ["1", "2", "3"]
    assert all(r[2] in ("strong", "medium", "weak") for r in rows)
    assert [float(r[1]) for r in rows] == sorted((float(r[1]) for r in rows), reverse=True)
    assert "<image>" in "\n".join(lines)


async def test_cli_rerank_names_a_missing_image_file(server, capsys):
    from lychee_grpc import cli

    args = ["rerank", "--target", f"127.0.0.1:{server.port}", "--query", "q", "--doc-image", "/nonexistent.png"]
    assert await asyncio.to_thread(cli.main, args) == 2
    assert "cannot read image" in capsys.readouterr().err


@pytest.mark.parametrize("method", ["Rerank", "GetModelInfo"])
async def test_a_body_that_is_not_a_message_is_invalid_argument_and_logged_once(server, method, caplog):
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        call = channel.unary_unary(f"/lychee.v1.RerankService/{method}")
        for _ in range(5):
            with pytest.raises(grpc.RpcError) as info:
                await call(b"\xff\xff\xff\xff not protobuf", timeout=10)
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "not a valid" in info.value.details()
    junk_lines = [r for r in caplog.records if "not a valid message" in r.getMessage()]
    assert len(junk_lines) <= 1
    assert not any(r.exc_info for r in caplog.records)


async def test_a_junk_stream_message_is_invalid_argument(server):
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        call = channel.stream_stream("/lychee.v1.RerankService/RerankStream")

        async def messages():
            yield b"\x0a\x05\x0a\x03\x0a\x01"  # truncated StreamOptions
        with pytest.raises(grpc.RpcError) as info:
            async for _ in call(messages(), timeout=10):
                pass
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_request_id_is_echoed_and_named_in_errors(server):
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = pb_grpc.RerankServiceStub(channel)
        call = stub.Rerank(make_request("q", ["d"]), metadata=(("x-request-id", "search-abc-1"),), timeout=30)
        response = await call
        assert ("x-request-id", "search-abc-1") in list(await call.trailing_metadata())
        assert response.request_id == "search-abc-1"
        failing = stub.Rerank(make_request("q", []), metadata=(("x-request-id", "search-abc-2"),), timeout=30)
        with pytest.raises(grpc.RpcError) as info:
            await failing
        assert "search-abc-2" in info.value.details()
        assert ("x-request-id", "search-abc-2") in list(await failing.trailing_metadata())
        stream = stub.RerankStream(timeout=30, metadata=(("x-request-id", "search-abc-3"),))
        await stream.write(pb.RerankStreamRequest(options=pb.StreamOptions(query=pb.Query(parts=[text("q")])),
                                                  documents=[pb.Document(id="d", parts=[text("d")])]))
        await stream.done_writing()
        assert ("x-request-id", "search-abc-3") in list(await stream.initial_metadata())
        assert [m async for m in stream][-1].ranking.request_id == "search-abc-3"


async def test_an_unexpected_batch_error_is_internal_and_the_server_keeps_serving(server, client):
    engine = server.engine
    launch = engine.executor.launch

    def broken(*args, **kwargs):
        engine.executor.launch = launch  # only this batch fails
        raise RuntimeError("injected fault")

    engine.executor.launch = broken
    with pytest.raises(grpc.RpcError) as info:
        await client.rerank("denim", TITLES)
    assert info.value.code() == grpc.StatusCode.INTERNAL
    assert "request id" in info.value.details() and "injected" not in info.value.details()
    ok = await client.rerank("denim", TITLES)
    assert len(ok.results) == len(TITLES)


async def test_stream_with_options_and_no_documents_is_invalid_like_unary(client):
    with pytest.raises(grpc.RpcError) as info:
        async for _ in client.rerank_stream("denim", []):
            pass
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "documents" in violated_fields(info.value)


async def test_min_score_and_top_n_apply_over_grpc(client):
    full = await client.rerank("retro denim jacket", TITLES)
    cut = full.results[2].score
    request = make_request("retro denim jacket", TITLES)
    request.min_score = cut
    resp = await client.stub.Rerank(request, timeout=30)
    assert [r.index for r in resp.results] == [r.index for r in full.results if r.score >= cut]
    assert resp.dropped_documents == sum(1 for r in full.results if r.score < cut)
