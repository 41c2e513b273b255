"""Cohere's Python SDK 7.x, driven unmodified (only its documented base_url; its api_key is the
server's bearer token): Client (v1) and ClientV2, sync and async; and raw vLLM- and TEI-shaped
requests with images. Every score equals the gRPC score of the same pair."""

from __future__ import annotations

import base64

import cohere
import httpx
import pytest
from conftest import TITLES, TOKEN, TOLERANCE, noise_png


def close(got: dict[int, float], expected: dict[int, float]) -> None:
    assert got.keys() == expected.keys()
    for index, score in got.items():
        assert abs(score - expected[index]) <= TOLERANCE, (index, score, expected[index])


def test_client_v1_sync_rerank_with_return_documents(server):
    co = cohere.Client(api_key=TOKEN, base_url=server.base_url)
    response = co.rerank(model="rerank-english-v3.0", query="denim jacket", documents=TITLES, top_n=3,
                         return_documents=True)
    expected = server.scores("denim jacket", [[t] for t in TITLES])
    best = sorted(expected, key=lambda i: -expected[i])[:3]
    assert [r.index for r in response.results] == best
    close({r.index: r.relevance_score for r in response.results}, {i: expected[i] for i in best})
    assert [r.document.text for r in response.results] == [TITLES[i] for i in best]
    assert response.meta.api_version.version == "1"


def test_client_v1_rank_fields_over_object_documents(server):
    docs = [{"title": "Denim jacket", "text": "vintage wash", "sku": "A1"}, {"title": "Green tea", "text": "loose"}]
    co = cohere.Client(api_key=TOKEN, base_url=server.base_url)
    response = co.rerank(model="rerank-english-v3.0", query="denim", documents=docs, rank_fields=["title", "text"])
    close({r.index: r.relevance_score for r in response.results},
          server.scores("denim", [["title: Denim jacket\ntext: vintage wash"], ["title: Green tea\ntext: loose"]]))


def test_client_v1_max_chunks_per_doc_scores_the_best_chunk_and_says_which(server):
    long_text = " ".join(f"denim{i}" for i in range(600))
    co = cohere.Client(api_key=TOKEN, base_url=server.base_url)
    response = co.rerank(model="rerank-english-v3.0", query="denim", documents=["a short title", long_text],
                         max_chunks_per_doc=2)
    result = {r.index: r for r in response.results}
    chunk = result[1].chunk  # our field; the SDK keeps fields it does not know
    assert chunk["chunks"] == 2
    piece = long_text[chunk["start"]:chunk["end"]]
    close({1: result[1].relevance_score}, {1: server.scores("denim", [[piece]])[0]})


async def test_async_client_v1(server):
    co = cohere.AsyncClient(api_key=TOKEN, base_url=server.base_url)
    response = await co.rerank(model="rerank-english-v3.0", query="grey sofa", documents=TITLES)
    close({r.index: r.relevance_score for r in response.results}, server.scores("grey sofa", [[t] for t in TITLES]))


def test_client_v2_sync(server):
    co = cohere.ClientV2(api_key=TOKEN, base_url=server.base_url)
    response = co.rerank(model="rerank-v3.5", query="running shoes", documents=TITLES, top_n=2,
                         max_tokens_per_doc=4096, priority=0)
    expected = server.scores("running shoes", [[t] for t in TITLES])
    best = sorted(expected, key=lambda i: -expected[i])[:2]
    assert [r.index for r in response.results] == best
    close({r.index: r.relevance_score for r in response.results}, {i: expected[i] for i in best})
    assert response.meta.api_version.version == "2"
    assert response.meta.billed_units.search_units == 1


async def test_async_client_v2(server):
    co = cohere.AsyncClientV2(api_key=TOKEN, base_url=server.base_url)
    response = await co.rerank(model="rerank-v3.5", query="tea", documents=TITLES)
    close({r.index: r.relevance_score for r in response.results}, server.scores("tea", [[t] for t in TITLES]))


def test_a_wrong_api_key_is_the_sdks_unauthorized_error(server):
    co = cohere.ClientV2(api_key="not-the-token", base_url=server.base_url)
    with pytest.raises(cohere.UnauthorizedError):
        co.rerank(model="rerank-v3.5", query="q", documents=["a"])


def test_a_bad_field_is_the_sdks_unprocessable_error_naming_it(server):
    co = cohere.ClientV2(api_key=TOKEN, base_url=server.base_url)
    with pytest.raises(cohere.UnprocessableEntityError) as info:
        co.rerank(model="rerank-v3.5", query="q", documents=["a"], top_n=-1)
    assert info.value.body["error"]["field_violations"][0]["field"] == "top_n"


# ---- raw requests in vLLM's and TEI's shapes, images included ----------------------------------
def _data_url(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode()


@pytest.mark.parametrize("path", ["/rerank", "/v1/rerank", "/v2/rerank"])
def test_vllm_shaped_request_with_images(server, path):
    img_q, img_d = noise_png(48, 48, seed=1), noise_png(64, 40, seed=2)
    documents = [
        "vintage denim jacket",
        {"content": [{"type": "image_url", "image_url": {"url": _data_url(img_d)}}]},
        {"content": [{"type": "text", "text": "denim, light wash"},
                     {"type": "image_url", "image_url": {"url": _data_url(img_d)}}]},
    ]
    with httpx.Client(base_url=server.base_url, headers={"authorization": f"Bearer {TOKEN}"}) as http:
        model = http.get("/v1/models").json()["data"][0]["id"]
        response = http.post(path, json={"model": model, "query": {"content": [
            {"type": "image_url", "image_url": {"url": _data_url(img_q)}}, {"type": "text", "text": "same jacket"}]},
            "documents": documents, "top_n": 0})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"] == model
    expected = server.scores([img_q, "same jacket"], [["vintage denim jacket"], [img_d], ["denim, light wash", img_d]])
    close({r["index"]: r["relevance_score"] for r in body["results"]}, expected)


def test_tei_shaped_request(server):
    with httpx.Client(base_url=server.base_url, headers={"authorization": f"Bearer {TOKEN}"}) as http:
        response = http.post("/rerank", json={"query": "denim", "texts": TITLES, "return_text": True,
                                              "truncate": True, "truncation_direction": "Right"})
    assert response.status_code == 200, response.text
    ranks = response.json()
    close({r["index"]: r["score"] for r in ranks}, server.scores("denim", [[t] for t in TITLES]))
    assert [r["text"] for r in ranks] == [TITLES[r["index"]] for r in ranks]
