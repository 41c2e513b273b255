"""The pair-score cache through a live server: the same request twice is answered bit for bit with
nothing computed the second time, over gRPC (unary and stream) and HTTP (Cohere/vLLM shapes, the
article's call, the chunked path); a result and the usage say so; GetModelInfo, /v1/info and the
metrics report the cache; a change to a key field is computed again; Explain never reads it.
(Two CPU workers: tests/e2e/test_workers.py.)"""

from __future__ import annotations

import httpx

from lychee_grpc.proto import lychee_pb2 as pb

from ..helpers import noise_image

QUERY = "retro denim jacket"


def docs() -> list:
    return [f"vintage wash denim jacket size {k}" for k in range(6)] + [
        [noise_image(40, 40, seed=3), "photo of a jacket"], "vintage wash denim jacket size 0"]  # a repeat


def answers(resp: pb.RerankResponse) -> list[tuple[int, float, float, bool]]:
    return sorted((r.index, r.score, r.logit, r.truncated) for r in resp.results)


def metric(app, name: str) -> float:
    line = next(x for x in app.metrics.exposition().decode().splitlines() if x.startswith(name + " "))
    return float(line.split()[-1])


async def test_the_same_grpc_request_twice_is_answered_from_the_cache_bit_for_bit(server, client):
    first = await client.rerank(QUERY, docs())
    assert not any(r.cached for r in first.results)
    assert first.usage.deduplicated_documents == 1 and first.usage.cached_documents == 0
    second = await client.rerank(QUERY, docs())
    assert answers(second) == answers(first)  # the same float32 bits on the wire
    assert all(r.cached for r in second.results)
    assert second.usage.cached_documents == 8 and second.usage.computed_tokens == 0
    assert second.usage.prompt_tokens == first.usage.prompt_tokens and second.usage.images == first.usage.images
    info = await client.model_info()
    assert info.score_cache_capacity_bytes == 256 << 20 and info.score_cache_entries == 7
    assert info.score_cache_hits == 8 and info.score_cache_misses == 7 and info.score_cache_bytes > 0
    assert metric(server, "lychee_score_cache_hits_total") == 8
    assert metric(server, "lychee_documents_deduplicated_total") == 1


async def test_a_stream_answers_cached_documents_from_the_cache(client):
    first = await client.rerank(QUERY, docs())
    events = [e async for e in client.rerank_stream(QUERY, [docs()[:3], docs()[3:]])]
    scored = [e.scored for e in events if e.HasField("scored")]
    assert sorted((s.index, s.score, s.logit) for s in scored) == [a[:3] for a in answers(first)]
    assert all(s.cached for s in scored)
    ranking = events[-1].ranking
    assert ranking.usage.cached_documents == 8 and ranking.usage.computed_tokens == 0


async def test_a_changed_key_field_is_computed_again(client):
    await client.rerank(QUERY, docs())
    for kwargs in ({"instruction": "rank products"}, {"truncation": "end"}, {"max_tokens_per_document": 500}):
        resp = await client.rerank(QUERY, docs(), **kwargs)
        assert not any(r.cached for r in resp.results), kwargs
    other = await client.rerank(QUERY + "s", docs())
    assert not any(r.cached for r in other.results)
    moved = await client.rerank(QUERY, [[noise_image(40, 40, seed=4), "photo of a jacket"]])
    assert not moved.results[0].cached  # another image, the same text


async def test_http_answers_a_repeat_from_the_cache_and_says_so(server):
    body = {"query": QUERY, "documents": [f"linen sofa {k}" for k in range(4)]}
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.http_port}", timeout=60) as http:
        first = (await http.post("/v1/rerank", json=body)).json()
        second = (await http.post("/v2/rerank", json={**body, "model": "any"})).json()
        article = (await http.post("/api/rerank", json=body)).json()
        long_text = " ".join(f"word{k}" for k in range(400))
        chunked = {"query": QUERY, "documents": [long_text], "max_chunks_per_doc": 3}
        chunks_first = (await http.post("/v1/rerank", json=chunked)).json()
        chunks_second = (await http.post("/v1/rerank", json=chunked)).json()
    assert not any(r["cached"] for r in first["results"]) and all(r["cached"] for r in second["results"])
    assert [(r["index"], r["relevance_score"]) for r in second["results"]] == [
        (r["index"], r["relevance_score"]) for r in first["results"]]  # JSON doubles, bit for bit
    assert second["usage"]["cached_documents"] == 4 and second["usage"]["computed_tokens"] == 0
    assert all(r["cached"] for r in article["results"])
    assert not chunks_first["results"][0]["cached"] and chunks_second["results"][0]["cached"]
    assert chunks_second["results"][0]["relevance_score"] == chunks_first["results"][0]["relevance_score"]
    assert chunks_second["usage"]["computed_tokens"] == 0


async def test_http_info_reports_the_cache(server):
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.http_port}", timeout=60) as http:
        await http.post("/v1/rerank", json={"query": QUERY, "documents": ["a", "b"]})
        info = (await http.get("/v1/info")).json()
    assert info["score_cache"]["capacity_bytes"] == 256 << 20 and info["score_cache"]["entries"] == 2


async def test_explain_never_reads_or_fills_the_cache(server, client):
    await client.rerank(QUERY, ["vintage wash denim jacket"])
    before = (await client.model_info()).score_cache_hits
    explained = await client.explain(QUERY, "vintage wash denim jacket")
    again = await client.explain(QUERY, "vintage wash denim jacket")
    info = await client.model_info()
    assert info.score_cache_hits == before and info.score_cache_entries == 1
    assert explained.usage.computed_tokens > 0 and again.usage.computed_tokens > 0


async def test_zero_turns_the_cache_off(make_server):
    from lychee_grpc.client import AsyncLycheeClient
    from lychee_grpc.service.config import ServiceConfig

    app = await make_server(app={"service": ServiceConfig(score_cache_bytes=0)})
    async with AsyncLycheeClient(f"127.0.0.1:{app.port}", timeout=60) as c:
        await c.rerank(QUERY, ["a title"])
        again = await c.rerank(QUERY, ["a title"])
        info = await c.model_info()
    assert not again.results[0].cached and again.usage.computed_tokens > 0
    assert info.score_cache_capacity_bytes == 0 and info.score_cache_entries == 0
