"""Property-based attack on the HTTP API (same server as the gRPC fuzz): random JSON of any shape,
random bytes, and well-formed rerank and explain bodies full of special-token strings, every
Unicode plane and malformed images. Every case gets a documented status (200; 400 for a body that
is not JSON; 413 over a size limit; 422 naming the field) with the one JSON error shape, within a
time bound; afterwards the reference request scores exactly as over gRPC."""

from __future__ import annotations

import base64
import json
import math
import time

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from .cases import EXAMPLES, IMAGES, REFERENCE, SETTINGS, SPECIAL, TIME_BOUND, any_char

ROUTES = ("/v1/rerank", "/api/rerank", "/v1/explain")
DOCUMENTED = {200, 400, 413, 422}

json_values = st.recursive(
    st.none() | st.booleans() | st.floats(allow_nan=False) | st.integers() | st.text(any_char, max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(any_char, max_size=8), children,
                                                                       max_size=4),
    max_leaves=12,
)
# Shapes the routes know, filled with hostile values.
texts = st.one_of(st.text(any_char, max_size=30), st.sampled_from(SPECIAL),
                  st.lists(st.sampled_from(SPECIAL) | st.text(any_char, max_size=6), max_size=5).map("".join))
images = st.sampled_from(sorted(IMAGES)).map(lambda name: IMAGES[name][0]).map(
    lambda b: st.sampled_from([base64.b64encode(b).decode(), "data:image/png;base64," + base64.b64encode(b).decode()]))
image_strings = images.flatmap(lambda s: s) | st.text(any_char, max_size=20)
sides = st.one_of(texts, st.fixed_dictionaries({}, optional={"text": texts, "image": image_strings}))
rerank_bodies = st.fixed_dictionaries(
    {"query": sides, "documents": st.lists(sides, max_size=6)},
    optional={"top_n": st.integers(-3, 10), "instruction": texts, "return_documents": st.booleans(),
              "min_score": st.floats(-1, 2), "truncation": st.sampled_from(["none", "end", "middle", ""])},
)
explain_bodies = st.fixed_dictionaries({"query": sides, "document": sides},
                                       optional={"grid_size": st.integers(-1, 9), "include_query": st.booleans()})


def post(fuzz, route: str, content: bytes, headers: dict | None = None) -> httpx.Response:
    started = time.perf_counter()
    response = fuzz.http.post(route, content=content, headers={"content-type": "application/json", **(headers or {})})
    seconds = time.perf_counter() - started
    fuzz.statuses[f"http {route} {response.status_code}"] += 1
    fuzz.latencies.setdefault(f"http {route}", []).append(seconds)
    assert seconds < TIME_BOUND, f"{route} took {seconds:.1f} s"
    assert response.status_code in DOCUMENTED, (route, response.status_code, response.text[:300])
    body = response.json()
    if response.status_code != 200:
        error = body["error"]
        assert set(error) >= {"code", "message", "field_violations"}, error
        if response.status_code == 422:
            assert error["field_violations"], error
    return response


@pytest.fixture(scope="module")
def http_fuzz(fuzz):
    fuzz.http = httpx.Client(base_url=f"http://127.0.0.1:{fuzz.app.http_port}", timeout=TIME_BOUND * 2)
    yield fuzz
    fuzz.http.close()


@pytest.mark.parametrize("route", ROUTES)
def test_random_json_of_any_shape(http_fuzz, route):
    @settings(max_examples=max(1, EXAMPLES // 6), **SETTINGS)
    @given(json_values)
    def case(value):
        post(http_fuzz, route, json.dumps(value).encode())

    case()


@pytest.mark.parametrize("route", ROUTES)
def test_random_bytes_as_a_body(http_fuzz, route):
    @settings(max_examples=max(1, EXAMPLES // 10), **SETTINGS)
    @given(st.binary(max_size=300))
    def case(body):
        post(http_fuzz, route, body)

    case()


@pytest.mark.parametrize("route", ["/v1/rerank", "/api/rerank"])
def test_hostile_rerank_bodies(http_fuzz, route):
    @settings(max_examples=max(1, EXAMPLES // 4), **SETTINGS)
    @given(rerank_bodies)
    def case(body):
        response = post(http_fuzz, route, json.dumps(body).encode())
        if response.status_code == 200 and route == "/v1/rerank":
            scores = [r["relevance_score"] for r in response.json()["results"]]
            assert all(math.isfinite(s) and 0 <= s <= 1 for s in scores)
            assert scores == sorted(scores, reverse=True)

    case()


def test_hostile_explain_bodies(http_fuzz):
    @settings(max_examples=max(1, EXAMPLES // 12), **SETTINGS)
    @given(explain_bodies)
    def case(body):
        post(http_fuzz, "/v1/explain", json.dumps(body).encode())

    case()


def test_the_reference_request_scores_as_over_grpc_after_the_attack(http_fuzz):
    query, documents = REFERENCE
    response = post(http_fuzz, "/v1/rerank", json.dumps({"query": query, "documents": documents}).encode())
    over_http = sorted((r["index"], r["relevance_score"]) for r in response.json()["results"])
    over_grpc = http_fuzz.reference_scores()
    assert [i for i, _ in over_http] == [i for i, _ in over_grpc]
    for (_, a), (_, b) in zip(over_http, over_grpc):
        assert a == pytest.approx(b, abs=1e-6)
