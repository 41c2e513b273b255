"""The token cache of documents' text through a live server: titles met again beside a new query
(which the pair-score cache cannot answer) are counted as its hits in GetModelInfo, /v1/info and
the metrics, and score as they did; `token_cache_bytes=0` (`--token-cache-mib 0`) reports it off."""

from __future__ import annotations

import httpx

TITLES = [f"vintage wash denim jacket size {k}" for k in range(5)]


def metric(app, name: str) -> float:
    line = next(x for x in app.metrics.exposition().decode().splitlines() if x.startswith(name + " "))
    return float(line.split()[-1])


async def test_titles_met_beside_a_new_query_are_counted_as_the_token_caches_hits(server, client):
    first = await client.rerank("retro denim jacket", TITLES)
    again = await client.rerank("blue denim jacket", TITLES)  # a new query: the pair-score cache misses
    assert not any(r.cached for r in again.results)
    assert again.usage.computed_tokens > 0 and len(first.results) == len(again.results) == len(TITLES)
    info = await client.model_info()
    assert (info.token_cache_hits, info.token_cache_misses) == (len(TITLES), len(TITLES))
    assert 0 < info.token_cache_bytes <= info.token_cache_capacity_bytes == 256 << 20
    assert metric(server, "lychee_token_cache_hits_total") == len(TITLES)
    assert metric(server, "lychee_token_cache_capacity_bytes") == 256 << 20
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.http_port}", timeout=60) as http:
        shown = (await http.get("/v1/info")).json()
    assert (shown["token_cache_hits"], shown["token_cache_misses"]) == (len(TITLES), len(TITLES))
    assert shown["token_cache_capacity_bytes"] == 256 << 20


async def test_a_zero_bound_is_reported_as_off(make_server):
    from lychee_grpc.client import AsyncLycheeClient

    app = await make_server(token_cache_bytes=0)
    async with AsyncLycheeClient(f"127.0.0.1:{app.port}") as client:
        await client.rerank("retro denim jacket", TITLES)
        await client.rerank("blue denim jacket", TITLES)
        info = await client.model_info()
    assert (info.token_cache_capacity_bytes, info.token_cache_bytes, info.token_cache_hits) == (0, 0, 0)
