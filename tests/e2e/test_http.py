"""The REST API over a live App: the same scores as gRPC, the article's call, min_score, and
every error kind as its HTTP status with the one JSON error body."""

from __future__ import annotations

import asyncio
import base64
import struct

import httpx
import pytest

from lychee_grpc.app import App
from lychee_grpc.client import image, text
from lychee_grpc.config import AppConfig, GrpcConfig, HttpConfig, MetricsConfig
from lychee_grpc.engine.engine import Engine
from lychee_grpc.http.app import create_app
from lychee_grpc.http.server import HttpServer
from lychee_grpc.proto import lychee_pb2 as pb
from lychee_grpc.service.errors import Unauthenticated

from ..helpers import TITLES, engine_config, noise_image, stats_of


def f32(x: float) -> float:
    """gRPC carries scores as float32; REST as JSON doubles."""
    return struct.unpack("f", struct.pack("f", x))[0]


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@pytest.fixture
async def make_app(loaded, tiny_model_dir):
    apps: list[App] = []

    async def factory(load: bool = True, max_message_mib: int = 256, **engine_overrides) -> App:
        config = AppConfig(
            engine=engine_config(tiny_model_dir, **engine_overrides),
            grpc=GrpcConfig(host="127.0.0.1", port=0, max_connection_age_seconds=0, max_message_mib=max_message_mib),
            http=HttpConfig(host="127.0.0.1", port=0),
            metrics=MetricsConfig(port=0),
            grace_seconds=2,
        )
        app = App(config, engine_factory=lambda cfg: Engine(cfg, loaded))
        await app.start()
        if load:
            await app.load()
        apps.append(app)
        return app

    yield factory
    for app in apps:
        await app.stop()


@pytest.fixture
async def http(server):
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.http_port}", timeout=60) as c:
        yield c


def error_of(response: httpx.Response) -> dict:
    body = response.json()
    assert set(body) == {"error"}, body
    assert set(body["error"]) == {"code", "message", "field_violations", "request_id"}, body
    assert body["error"]["request_id"] == response.headers["x-request-id"]
    return body["error"]


def fields(response: httpx.Response) -> list[str]:
    return [v["field"] for v in error_of(response)["field_violations"]]


async def test_rest_and_grpc_give_identical_scores_for_the_same_inputs(http, client):
    img_q, img_d = noise_image(56, 84, seed=6), noise_image(64, 64, seed=5)
    rest = await http.post("/v1/rerank", json={
        "query": {"text": "same style", "image": b64(img_q)},
        "documents": ["cotton tee", {"image": f"data:image/png;base64,{b64(img_d)}"},
                      {"text": "cotton tee", "image": b64(img_d)}, *TITLES],
    })
    assert rest.status_code == 200, rest.text
    # The JSON object's image goes first, then its text.
    rpc = await client.rerank(
        pb.Query(parts=[image(img_q), text("same style")]),
        [pb.Document(parts=[text("cotton tee")]), pb.Document(parts=[image(img_d)]),
         pb.Document(parts=[image(img_d), text("cotton tee")]), *[pb.Document(parts=[text(t)]) for t in TITLES]],
    )
    body = rest.json()
    assert [r["index"] for r in body["results"]] == [r.index for r in rpc.results]
    assert [f32(r["relevance_score"]) for r in body["results"]] == [r.score for r in rpc.results]
    assert [r["band"] for r in body["results"]] == [pb.RelevanceBand.Name(r.band).split("_")[-1].lower()
                                                    for r in rpc.results]
    assert body["usage"]["images"] == rpc.usage.images == 3
    assert body["id"] == rest.headers["x-request-id"]


async def test_article_api_rerank_answers_ranked_documents_with_scores(http):
    response = await http.post("/api/rerank", json={"query": "retro denim jacket", "documents": TITLES})
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert sorted(r["index"] for r in results) == list(range(len(TITLES)))
    assert [r["document"] for r in results] == [TITLES[r["index"]] for r in results]
    scores = [r["score"] for r in results]
    assert scores == sorted(scores, reverse=True)


async def test_min_score_leaves_out_weak_results_and_counts_them(http):
    full = (await http.post("/v1/rerank", json={"query": "denim", "documents": TITLES})).json()["results"]
    threshold = sorted(r["relevance_score"] for r in full)[2]  # the middle score: two fall below
    response = await http.post("/v1/rerank", json={"query": "denim", "documents": TITLES, "min_score": threshold,
                                                    "top_n": 2, "return_documents": True})
    body = response.json()
    assert body["dropped_documents"] == 2
    assert [r["index"] for r in body["results"]] == [r["index"] for r in full[:2]]
    assert all(r["document"] == {"text": TITLES[r["index"]]} for r in body["results"])
    assert "document" not in full[0]


async def test_info_probes_and_openapi(http, server):
    info = (await http.get("/v1/info")).json()
    assert info["random_weights"] is True
    assert info["limits"]["max_documents_per_request"] == 150
    assert info["bands"] == {"strong": 0.75, "medium": 0.55}
    assert (await http.get("/health")).json() == {"status": "serving"}
    assert (await http.get("/live")).status_code == 200
    paths = (await http.get("/openapi.json")).json()["paths"]
    assert {"/v1/rerank", "/api/rerank", "/v1/explain", "/v1/info", "/health", "/live"} <= set(paths)
    assert "swagger" in (await http.get("/docs")).text.lower()
    assert "Lychee rerank console" in (await http.get("/")).text


async def test_request_id_is_read_echoed_and_named_in_errors(http):
    response = await http.post("/v1/rerank", json={"query": "q", "documents": []}, headers={"x-request-id": "abc-1"})
    assert response.headers["x-request-id"] == "abc-1"
    assert error_of(response)["request_id"] == "abc-1"


async def test_body_that_is_not_json_is_400(http):
    response = await http.post("/v1/rerank", content=b"{not json", headers={"content-type": "application/json"})
    assert response.status_code == 400
    assert error_of(response)["code"] == "invalid_argument"


BAD = {
    "unknown field": ({"query": "q", "documents": ["a"], "topn": 2}, "topn"),
    "unknown query field": ({"query": {"txt": "q"}, "documents": ["a"]}, "query.txt"),
    "document without text": ({"query": "q", "documents": ["a", "b", "c", {"img": "x"}]}, "documents[3]"),
    "a string for an integer": ({"query": "q", "documents": ["a"], "top_n": "2"}, "top_n"),
    "a string for a boolean": ({"query": "q", "documents": ["a"], "return_documents": "yes"}, "return_documents"),
    "an object for a document": ({"query": "q", "documents": [3]}, "documents[0]"),
    "an unknown vLLM part": ({"query": "q", "documents": [{"content": [{"type": "video_url"}]}]},
                             "documents[0].content[0]"),
    "empty document object": ({"query": "q", "documents": ["a", {}]}, "documents[1]"),
    "image not base64": ({"query": "q", "documents": ["a", "b", "c", {"image": "%%%"}]}, "documents[3].image"),
    "image url": ({"query": {"image": "https://example.com/a.png"}, "documents": ["a"]}, "query.image"),
    "corrupt image": ({"query": "q", "documents": ["a", {"image": b64(noise_image(40, 40)[:60])}]},
                      "documents[1].image"),
    "empty text": ({"query": "q", "documents": ["a", {"text": ""}]}, "documents[1].text"),
    "min_score over 1": ({"query": "q", "documents": ["a"], "min_score": 2}, "min_score"),
    "no documents": ({"query": "q", "documents": []}, "documents"),
}


@pytest.mark.parametrize("name", list(BAD))
async def test_invalid_requests_are_422_naming_the_json_field(http, name):
    body, field = BAD[name]
    response = await http.post("/v1/rerank", json=body)
    assert response.status_code == 422, response.text
    assert error_of(response)["code"] == "invalid_argument"
    assert field in fields(response)


async def test_over_a_limit_is_413(http, make_app):
    response = await http.post("/v1/rerank", json={"query": "q", "documents": ["d"] * 151})
    assert response.status_code == 413
    assert error_of(response)["code"] == "too_large"
    small = await make_app(max_message_mib=1)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{small.http_port}") as c:
        response = await c.post("/v1/rerank", json={"query": "q", "documents": ["x" * (2 << 20)]})
    assert response.status_code == 413
    assert fields(response) == ["body"]


async def test_full_queue_is_429_with_retry_after(make_app):
    app = await make_app(max_queue_documents=2)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{app.http_port}") as c:
        response = await c.post("/v1/rerank", json={"query": "q", "documents": TITLES})
    assert response.status_code == 429
    assert error_of(response)["code"] == "overloaded"
    assert int(response.headers["retry-after"]) >= 1


async def test_loading_and_draining_are_503_while_live_stays_200(make_app):
    app = await make_app(load=False)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{app.http_port}") as c:
        response = await c.post("/v1/rerank", json={"query": "q", "documents": ["a"]})
        assert response.status_code == 503
        assert error_of(response)["code"] == "unavailable"
        assert (await c.get("/health")).json() == {"status": "loading"}
        assert (await c.get("/live")).status_code == 200
        await app.load()
        assert (await c.get("/health")).status_code == 200
        app.lifecycle.drain()
        assert (await c.get("/health")).status_code == 503
        assert (await c.get("/v1/info")).status_code == 503


async def test_tiny_timeout_is_504_and_the_server_carries_on(http, server):
    response = await http.post("/v1/rerank", json={"query": "q", "documents": TITLES * 20},
                               headers={"x-request-timeout": "0.001"})
    assert response.status_code == 504
    assert error_of(response)["code"] == "deadline_exceeded"
    bad = await http.post("/v1/rerank", json={"query": "q", "documents": ["a"]}, headers={"x-request-timeout": "soon"})
    assert bad.status_code == 422 and fields(bad) == ["x-request-timeout"]
    ok = await http.post("/v1/rerank", json={"query": "q", "documents": TITLES})
    assert ok.status_code == 200


async def test_client_disconnect_cancels_the_work(http, server):
    engine = server.engine
    before = stats_of(engine).documents_scored
    request = asyncio.create_task(http.post("/v1/rerank", json={"query": "q", "documents": TITLES * 30}))
    while server.lifecycle.in_flight == 0:
        await asyncio.sleep(0.005)
    request.cancel()  # closes the connection
    for _ in range(500):
        if server.lifecycle.in_flight == 0:
            break
        await asyncio.sleep(0.01)
    assert server.lifecycle.in_flight == 0
    await asyncio.sleep(0.2)
    assert stats_of(engine).documents_scored - before < len(TITLES) * 30
    assert stats_of(engine).queue_documents == 0


class Observer:
    def __init__(self):
        self.calls: list[tuple] = []

    def request_done(self, transport, method, code, seconds, request_id, peer, record=None):
        self.calls.append((transport, method, code, request_id, peer))


class TokenCheck:
    def check(self, authorization: str | None) -> None:
        if authorization != "Bearer sesame":
            raise Unauthenticated("a valid bearer token is required")


async def test_auth_hook_guards_the_api_but_not_probes_console_or_docs(server):
    observer = Observer()
    rest = create_app(server.service, server.lifecycle, authenticator=TokenCheck(), observers=[observer])
    http_server = HttpServer(rest, "127.0.0.1", 0)
    await http_server.start()
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{http_server.port}") as c:
            refused = await c.post("/v1/rerank", json={"query": "q", "documents": ["a"]})
            assert refused.status_code == 401
            assert refused.headers["www-authenticate"] == "Bearer"
            assert error_of(refused)["code"] == "unauthenticated"
            assert (await c.get("/api/rerank", headers={"authorization": "Bearer nope"})).status_code == 401
            for path in ("/health", "/live", "/", "/console.js", "/openapi.json", "/docs"):
                assert (await c.get(path)).status_code == 200, path
            ok = await c.post("/v1/rerank", json={"query": "q", "documents": ["a"]},
                              headers={"authorization": "Bearer sesame"})
            assert ok.status_code == 200
    finally:
        await http_server.stop(1)
    assert observer.calls[0][:3] == ("http", "/v1/rerank", "401")
    assert observer.calls[-1][:3] == ("http", "/v1/rerank", "200")
    assert observer.calls[-1][3] == ok.headers["x-request-id"]
    assert observer.calls[-1][4].startswith("127.0.0.1:")


# ---- every request shape its users already send, on the one service ---------------------------
async def grpc_scores(client, query, documents) -> dict[int, float]:
    """index -> gRPC score, for documents given as lists of parts."""
    rpc = await client.rerank(query, [pb.Document(parts=d) for d in documents])
    return {r.index: r.score for r in rpc.results}


async def test_cohere_v2_body_on_v2_rerank_with_nulls_answers_cohere_v2_fields(http, client):
    response = await http.post("/v2/rerank", json={
        "model": "rerank-v3.5", "query": "denim", "documents": TITLES, "top_n": None, "max_tokens_per_doc": None,
        "priority": 0})
    assert response.status_code == 200, response.text
    body = response.json()
    expected = await grpc_scores(client, "denim", [[text(t)] for t in TITLES])
    assert {r["index"]: f32(r["relevance_score"]) for r in body["results"]} == expected
    assert body["meta"]["api_version"] == {"version": "2"}
    assert body["meta"]["billed_units"] == {"search_units": 1}
    assert all("document" not in r for r in body["results"])


async def test_vllm_body_mixing_strings_and_content_with_an_image_echoes_documents(http, client):
    img = noise_image(64, 64, seed=5)
    url = f"data:image/png;base64,{b64(img)}"
    content = {"content": [{"type": "text", "text": "cotton tee"}, {"type": "image_url", "image_url": {"url": url}}]}
    response = await http.post("/rerank", json={
        "model": "whatever", "query": "same style", "documents": ["cotton tee", content],
        "truncate_prompt_tokens": -1, "use_activation": True, "priority": 0})
    assert response.status_code == 200, response.text
    body = response.json()
    expected = await grpc_scores(client, "same style", [[text("cotton tee")], [text("cotton tee"), image(img)]])
    assert {r["index"]: f32(r["relevance_score"]) for r in body["results"]} == expected
    echoed = {r["index"]: r["document"] for r in body["results"]}
    assert echoed[0] == {"text": "cotton tee"}
    assert echoed[1]["multi_modal"] == content["content"]
    assert body["usage"]["prompt_tokens"] == body["usage"]["total_tokens"] > 0


async def test_vllm_use_activation_false_answers_the_logit(http):
    response = await http.post("/v1/rerank", json={"query": "q", "documents": TITLES[:2], "use_activation": False})
    assert all(r["relevance_score"] == r["logit"] for r in response.json()["results"])


async def test_v1_models_lists_the_served_model(http, server):
    body = (await http.get("/v1/models")).json()
    assert body["object"] == "list"
    assert [m["id"] for m in body["data"]] == [server.service.model_info().model]


async def test_tei_body_on_rerank_answers_tei_list_with_raw_scores_and_text(http, client):
    response = await http.post("/rerank", json={"query": "denim", "texts": TITLES[:3], "raw_scores": True,
                                                "return_text": True, "truncate": False,
                                                "truncation_direction": "Right"})
    assert response.status_code == 200, response.text
    ranks = response.json()
    rpc = await client.rerank("denim", [pb.Document(parts=[text(t)]) for t in TITLES[:3]])
    assert [(r["index"], f32(r["score"])) for r in ranks] == [(r.index, r.logit) for r in rpc.results]
    assert [r["text"] for r in ranks] == [TITLES[r["index"]] for r in ranks]
    left = await http.post("/rerank", json={"query": "q", "texts": ["a"], "truncation_direction": "left"})
    assert left.status_code == 422 and fields(left) == ["truncation_direction"]
    empty = await http.post("/rerank", json={"query": "q", "texts": []})
    assert empty.status_code == 422 and fields(empty) == ["texts"]


async def test_cohere_max_chunks_per_doc_scores_a_long_document_by_its_best_chunk(http, client):
    words = [f"{w}{i}" for i in range(400) for w in ("denim ",)]
    long_text = " ".join(words)  # far over the 512-token limit of the test server
    response = await http.post("/v1/rerank", json={
        "query": "denim", "documents": ["short title", long_text], "max_chunks_per_doc": 3, "return_documents": True})
    assert response.status_code == 200, response.text
    result = {r["index"]: r for r in response.json()["results"]}
    chunk = result[1]["chunk"]
    assert chunk["chunks"] == 3 and result[1]["truncated"] is True  # more text than three chunks
    assert result[0]["chunk"] == {"index": 0, "start": 0, "end": len("short title"), "chunks": 1}
    piece = long_text[chunk["start"]:chunk["end"]]
    rpc = await client.rerank("denim", [pb.Document(parts=[text(piece)])])
    # Alone the chunk meets another batch: equal within float32 rounding of batch composition.
    assert abs(result[1]["relevance_score"] - rpc.results[0].score) < 1e-6
    assert result[1]["document"] == {"text": long_text}
    refused = await http.post("/v1/rerank", json={"query": "denim", "documents": ["a", long_text]})
    assert refused.status_code == 422 and fields(refused) == ["documents[1]"]


async def test_cohere_rank_fields_score_the_named_fields(http, client):
    docs = [{"title": "Denim jacket", "text": "vintage wash", "sku": "A1"}, {"title": "Green tea", "text": "loose"}]
    response = await http.post("/v1/rerank", json={"query": "denim", "documents": docs,
                                                    "rank_fields": ["title", "text"], "return_documents": True})
    assert response.status_code == 200, response.text
    expected = await grpc_scores(client, "denim", [[text("title: Denim jacket\ntext: vintage wash")],
                                                   [text("title: Green tea\ntext: loose")]])
    body = response.json()
    assert {r["index"]: f32(r["relevance_score"]) for r in body["results"]} == expected
    assert {r["index"]: r["document"] for r in body["results"]} == dict(enumerate(docs))


POLICY = {
    "relevant spans": ({"relevant_spans": {"mode": "enabled"}}, "relevant_spans.mode"),
    "left truncation": ({"truncation_side": "left"}, "truncation_side"),
    "query truncation": ({"max_tokens_per_query": 5}, "max_tokens_per_query"),
    "processor settings": ({"mm_processor_kwargs": {"max_pixels": 100}}, "mm_processor_kwargs"),
    "two token caps": ({"max_tokens_per_doc": 5, "truncate_prompt_tokens": 5}, "truncate_prompt_tokens"),
}


@pytest.mark.parametrize("name", list(POLICY))
async def test_what_a_known_client_may_send_but_cannot_mean_here_is_refused_naming_it(http, name):
    extra, field = POLICY[name]
    response = await http.post("/v2/rerank", json={"query": "q", "documents": ["a"], **extra})
    assert response.status_code == 422, response.text
    assert fields(response) == [field]


async def test_ignored_fields_of_known_clients_are_accepted(http):
    response = await http.post("/rerank", json={
        "query": "q", "documents": ["a"], "model": "m", "user": "u", "request_id": "r", "cache_salt": "s",
        "priority": 3, "mm_processor_kwargs": {}, "relevant_spans": {"mode": "disabled"}, "max_tokens_per_query": 0,
        "truncation_side": "right", "softmax": True, "activation": True})
    assert response.status_code == 200, response.text


# ---- an HTTP API without surprises -------------------------------------------------------------
async def test_unknown_paths_are_404_and_known_paths_with_another_method_405_with_allow(server):
    observer = Observer()
    rest = create_app(server.service, server.lifecycle, observers=[observer])
    http_server = HttpServer(rest, "127.0.0.1", 0)
    await http_server.start()
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{http_server.port}") as c:
            for method, path in (("POST", "/v1/nothing"), ("GET", "/nothing.js"), ("GET", "/v3/rerank")):
                missing = await c.request(method, path)
                assert missing.status_code == 404, (method, path)
                assert error_of(missing)["code"] == "not_found"
            for method, path, allow in (("GET", "/v1/rerank", "POST"), ("GET", "/v2/rerank", "POST"),
                                        ("POST", "/", "GET, HEAD"), ("DELETE", "/v1/info", "GET"),
                                        ("POST", "/docs", "GET, HEAD")):
                wrong = await c.request(method, path)
                assert wrong.status_code == 405, (method, path)
                assert set(wrong.headers["allow"].split(", ")) == set(allow.split(", "))
                assert error_of(wrong)["code"] == "method_not_allowed"
    finally:
        await http_server.stop(1)
    labels = {(call[1], call[2]) for call in observer.calls}
    assert ("unmatched", "404") in labels and ("/v1/rerank", "405") in labels
    assert not any(label == "console" for label, _ in labels)


async def test_body_checks_come_before_fields_415_then_400(http):
    wrong = await http.post("/v1/rerank", content=b'{"query": "q", "documents": ["a"]}',
                            headers={"content-type": "text/plain"})
    assert wrong.status_code == 415 and error_of(wrong)["code"] == "unsupported_media_type"
    form = await http.post("/v1/rerank", data={"query": "q"})
    assert form.status_code == 415
    for empty in (b"", b"  \n"):
        response = await http.post("/v2/rerank", content=empty, headers={"content-type": "application/json"})
        assert response.status_code == 400 and fields(response) == ["body"]
    not_object = await http.post("/v1/rerank", json=["q"])
    assert not_object.status_code == 422 and error_of(not_object)["field_violations"][0]["description"].startswith(
        "expected an object, got an array")


async def test_wrong_types_name_the_field_and_the_type_expected(http):
    response = await http.post("/v1/rerank", json={"query": 5, "documents": "a", "top_n": "2"})
    assert response.status_code == 422
    described = {v["field"]: v["description"] for v in error_of(response)["field_violations"]}
    assert described["top_n"] == 'expected an integer, got a string "2"'
    assert described["documents"].startswith("expected an array, got a string")
    assert described["query"].startswith("expected a string, an object")


async def test_docs_pages_load_their_assets_from_this_server(http):
    page = (await http.get("/docs")).text
    assert "/docs/assets/swagger-ui-bundle.js" in page and "cdn" not in page.lower()
    assert (await http.get("/docs/assets/swagger-ui-bundle.js")).status_code == 200


@pytest.mark.parametrize(("flag", "host_flag"), [("--port", "--host"), ("--http-port", "--http-host"),
                                                  ("--metrics-port", "--metrics-host")])
def test_a_taken_port_is_named_with_its_flag(tiny_model_dir, flag, host_flag):
    import socket
    import subprocess
    import sys

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        ports = {"--port": "0", "--http-port": "0", "--metrics-port": "0", flag: str(port)}
        hosts = ["--host", "127.0.0.1", "--http-host", "127.0.0.1", "--metrics-host", "127.0.0.1"]
        proc = subprocess.run([sys.executable, "-m", "lychee_grpc.cli", "serve", "--model", tiny_model_dir,
                               "--warmup", "false", *hosts, *[x for kv in ports.items() for x in kv]],
                              capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    last = proc.stderr.strip().splitlines()[-1]
    assert f"127.0.0.1:{port}" in last and f"{flag}:" in last, proc.stderr
