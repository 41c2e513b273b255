"""Property-based attack on the gRPC surface: random messages (special-token strings, NUL and
every Unicode plane, empty parts, thousands of documents, huge strings, random options), random
bytes as request bodies, and malformed images. Every case gets its documented status within a
time bound, and afterwards a reference request still gets identical scores.

Documented statuses: OK; INVALID_ARGUMENT with a BadRequest naming the field (bad input, and any
per-request limit such as too many documents or tokens); RESOURCE_EXHAUSTED only for overload,
which one caller at a time never causes, so here it is a failure."""

from __future__ import annotations

import math
import re
import time

import grpc
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lychee_grpc.proto import lychee_pb2 as pb
from lychee_grpc.rpc.servicer import RerankServicer

from ..helpers import violated_fields
from .cases import EXAMPLES, IMAGES, SETTINGS, SPECIAL, TIME_BOUND, any_char

FIELD = re.compile(r"^(options\.)?(query|documents|document|instruction|top_n|min_score|max_tokens_per_document|"
                   r"truncation|grid_size|include_query|options)(\[\d+\])?(\.|$)")

texts = st.one_of(
    st.text(any_char, max_size=40),
    st.sampled_from(SPECIAL),
    st.lists(st.one_of(st.sampled_from(SPECIAL), st.text(any_char, max_size=8)), max_size=6).map("".join),
    st.sampled_from(["", " ", "\t\n", "denim jacket", "vintage jeans"]),
    st.integers(1_000, 300_000).map(lambda n: "jacket " * (n // 7)),  # huge
)
images = st.sampled_from(sorted(IMAGES)).map(lambda name: IMAGES[name][0])
# What a well-meaning (or sly) caller sends: never empty, often holding special-token strings.
scorable_texts = st.one_of(
    st.text(any_char, min_size=1, max_size=40).filter(str.strip),
    st.tuples(st.text(any_char, max_size=10), st.sampled_from(SPECIAL), st.text(any_char, max_size=10)).map(
        lambda t: "x" + "".join(t)),
    st.sampled_from(["denim jacket", "vintage jeans", "organic green tea", "<|im_end|>x"]),
)
scorable_images = st.sampled_from(sorted(n for n, (_, e) in IMAGES.items() if e == "ok")).map(
    lambda name: IMAGES[name][0])
scorable_parts = st.lists(st.one_of(scorable_texts.map(lambda t: pb.Part(text=t)),
                                    scorable_texts.map(lambda t: pb.Part(text=t)),
                                    scorable_images.map(lambda b: pb.Part(image=b))), min_size=1, max_size=3)
scorable_documents = st.builds(lambda id_, ps: pb.Document(id=id_, parts=ps), st.text(any_char, max_size=6),
                               scorable_parts)
parts = st.one_of(texts.map(lambda t: pb.Part(text=t)), images.map(lambda b: pb.Part(image=b)), st.just(pb.Part()))
documents = st.builds(lambda id_, ps: pb.Document(id=id_, parts=ps), st.text(any_char, max_size=6),
                      st.lists(parts, max_size=3))
document_lists = st.one_of(
    st.lists(documents, max_size=6),
    st.integers(151, 5000).map(lambda n: [pb.Document(parts=[pb.Part(text="t")])] * n),  # over the limit
    st.integers(20, 60).map(lambda n: [pb.Document(parts=[pb.Part(text=f"title {k}")]) for k in range(n)]),
)
min_scores = st.one_of(st.none(), st.floats(allow_nan=True, allow_infinity=True, width=32))
uint32 = st.one_of(st.integers(0, 10), st.integers(0, 2**32 - 1))


def rerank_request(query, docs, instruction, top_n, min_score, max_tokens, truncation, echo) -> pb.RerankRequest:
    request = pb.RerankRequest(query=pb.Query(parts=query), documents=docs, instruction=instruction, top_n=top_n,
                               max_tokens_per_document=max_tokens, truncation=truncation, return_documents=echo)
    if min_score is not None:
        request.min_score = min_score
    return request


wild_requests = st.builds(rerank_request, st.lists(parts, max_size=3), document_lists, texts, uint32, min_scores,
                          uint32, st.integers(0, 3), st.booleans())
scorable_requests = st.builds(rerank_request, scorable_parts, st.lists(scorable_documents, min_size=1, max_size=8),
                              st.one_of(st.just(""), scorable_texts), st.integers(0, 10),
                              st.one_of(st.none(), st.floats(0, 1, width=32)), st.just(0), st.integers(0, 2),
                              st.booleans())
rerank_requests = st.one_of(wild_requests, scorable_requests)


def check(fuzz, rpc: str, call) -> object:
    """Runs one case; checks its status is documented and names the field when invalid."""
    started = time.perf_counter()
    try:
        result = call()
        code = grpc.StatusCode.OK
    except grpc.RpcError as err:
        result, code = err, err.code()
    fuzz.record(rpc, code, time.perf_counter() - started)
    assert code in (grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT), (rpc, code, getattr(result, "details",
                                                                                               lambda: "")())
    if code == grpc.StatusCode.INVALID_ARGUMENT and rpc != "raw":
        fields = violated_fields(result)
        assert fields and all(FIELD.match(f) for f in fields), fields
    return result if code == grpc.StatusCode.OK else None


def check_results(results, n_docs: int) -> None:
    indices = [r.index for r in results]
    assert len(set(indices)) == len(indices) and all(0 <= i < n_docs for i in indices)
    scores = [r.score for r in results]
    assert all(math.isfinite(s) and 0.0 <= s <= 1.0 for s in scores)
    assert scores == sorted(scores, reverse=True)


def plainly_valid(request) -> bool:
    """Requests that must be scored: small nonempty text parts only, sane options. Sizes are in
    UTF-8 bytes: byte-level BPE never makes more tokens than bytes, so these fit the test
    server's token limits (512 per query or document, 64 for the instruction) whatever the text."""
    def ok_parts(ps) -> bool:
        return (bool(ps) and all(p.WhichOneof("content") == "text" and p.text.strip() for p in ps)
                and sum(len(p.text.encode()) for p in ps) < 400)

    return (ok_parts(request.query.parts) and 0 < len(request.documents) <= 60
            and all(ok_parts(d.parts) for d in request.documents) and len(request.instruction.encode()) < 64
            and request.max_tokens_per_document == 0 and request.truncation in (0, 1, 2)  # the enum's values
            and (not request.HasField("min_score") or 0.0 <= request.min_score <= 1.0))


def test_random_rerank_messages(fuzz):
    @settings(max_examples=EXAMPLES, **SETTINGS)
    @given(rerank_requests)
    def case(request):
        resp = check(fuzz, "Rerank", lambda: fuzz.stub.Rerank(request, timeout=TIME_BOUND + 5))
        if resp is not None:
            check_results(resp.results, len(request.documents))
            if request.top_n:
                assert len(resp.results) <= request.top_n
        elif plainly_valid(request):
            pytest.fail("a plainly valid request was refused")

    case()
    fuzz.assert_still_serving_identically()


def test_random_rerank_streams(fuzz):
    def make_options(q, i, n, m):
        return pb.StreamOptions(query=pb.Query(parts=q), instruction=i, top_n=n,
                                **({} if m is None else {"min_score": m}))

    options = st.builds(make_options, st.lists(parts, max_size=2), texts, uint32, min_scores)
    scorable_options = st.builds(make_options, scorable_parts, st.one_of(st.just(""), scorable_texts),
                                 st.integers(0, 5), st.none())
    chunk = st.builds(lambda ds: pb.RerankStreamRequest(documents=ds), st.lists(scorable_documents, max_size=4))
    messages = st.one_of(
        st.lists(chunk, min_size=1, max_size=4),
        st.lists(st.one_of(
            st.builds(lambda ds: pb.RerankStreamRequest(documents=ds), st.lists(documents, max_size=4)),
            st.builds(lambda o: pb.RerankStreamRequest(options=o), options),
        ), max_size=5),
    )
    first = st.one_of(scorable_options.map(lambda o: pb.RerankStreamRequest(options=o)),
                      options.map(lambda o: pb.RerankStreamRequest(options=o)), st.just(pb.RerankStreamRequest()))

    @settings(max_examples=max(1, EXAMPLES * 4 // 7), **SETTINGS)
    @given(first, messages)
    def case(head, rest):
        sent = [head, *rest]
        n_docs = sum(len(m.documents) for m in sent)

        def call():
            return list(fuzz.stub.RerankStream(iter(sent), timeout=TIME_BOUND + 5))

        replies = check(fuzz, "RerankStream", call)
        if replies is not None:
            assert replies and replies[-1].HasField("ranking")
            check_results(replies[-1].ranking.results, n_docs)

    case()
    fuzz.assert_still_serving_identically()


METHODS = {
    "Rerank": "unary", "GetModelInfo": "unary", "Explain": "unary", "RerankStream": "stream",
}


@pytest.mark.parametrize("method", sorted(METHODS))
def test_random_bytes_as_a_request_body(fuzz, method):
    """Bytes that may or may not parse: INVALID_ARGUMENT (or OK when they happen to be a valid
    message), never UNKNOWN or INTERNAL, and never a hang."""
    if method == "Explain" and "Explain" not in vars(RerankServicer):
        pytest.skip("Explain is not implemented in this tree")
    path = f"/lychee.v1.RerankService/{method}"
    if METHODS[method] == "unary":
        rpc = fuzz.channel.unary_unary(path, request_serializer=None, response_deserializer=None)
        body = st.one_of(st.binary(max_size=512), st.binary(min_size=1, max_size=8).map(lambda b: b * 2000))

        def call(payload):
            return rpc(payload, timeout=TIME_BOUND + 5)
    else:
        rpc = fuzz.channel.stream_stream(path, request_serializer=None, response_deserializer=None)
        body = st.lists(st.binary(max_size=256), min_size=1, max_size=4)

        def call(payload):
            return list(rpc(iter(payload), timeout=TIME_BOUND + 5))

    @settings(max_examples=max(1, EXAMPLES * 3 // 14), **SETTINGS)
    @given(body)
    def case(payload):
        check(fuzz, "raw", lambda: call(payload))

    case()
    fuzz.assert_still_serving_identically()


@pytest.mark.parametrize("where", ["query", "document"])
@pytest.mark.parametrize("name", sorted(IMAGES))
def test_image_corpus_gets_its_documented_status(fuzz, name, where):
    data, expected = IMAGES[name]
    image = pb.Part(image=data)
    query = [image, pb.Part(text="same style")] if where == "query" else [pb.Part(text="grey sofa")]
    docs = [pb.Document(id="d", parts=[pb.Part(text="sofa"), image] if where == "document" else
                        [pb.Part(text="sofa")]), pb.Document(id="t", parts=[pb.Part(text="plain title")])]
    request = pb.RerankRequest(query=pb.Query(parts=query), documents=docs)
    started = time.perf_counter()
    try:
        resp = fuzz.stub.Rerank(request, timeout=TIME_BOUND + 5)
        code = grpc.StatusCode.OK
    except grpc.RpcError as err:
        code, resp = err.code(), err
    fuzz.record(f"image:{where}", code, time.perf_counter() - started)
    if expected == "ok":
        assert code == grpc.StatusCode.OK, resp
        check_results(resp.results, 2)
    else:
        assert code == grpc.StatusCode.INVALID_ARGUMENT, (code, resp)
        want = "query.parts[0].image" if where == "query" else "documents[0].parts[1].image"
        assert violated_fields(resp) == [want]


def test_mutated_images(fuzz):
    """Valid images with bytes flipped, cut or appended: scored, or refused naming the image."""
    valid = [data for data, expected in IMAGES.values() if expected == "ok"]

    @st.composite
    def mutated(draw):
        data = bytearray(draw(st.sampled_from(valid)))
        for _ in range(draw(st.integers(0, 8))):
            k = draw(st.integers(0, len(data) - 1))
            data[k] = draw(st.integers(0, 255))
        cut = draw(st.one_of(st.just(len(data)), st.integers(1, len(data))))
        return bytes(data[:cut]) + draw(st.one_of(st.just(b""), st.binary(max_size=64)))

    @settings(max_examples=max(1, EXAMPLES * 3 // 7), **SETTINGS)
    @given(mutated())
    def case(data):
        request = pb.RerankRequest(query=pb.Query(parts=[pb.Part(text="sofa")]),
                                   documents=[pb.Document(parts=[pb.Part(image=data)])])
        resp = check(fuzz, "Rerank:image", lambda: fuzz.stub.Rerank(request, timeout=TIME_BOUND + 5))
        if resp is not None:
            check_results(resp.results, 1)

    case()
    fuzz.assert_still_serving_identically()


def test_random_explain_messages(fuzz):
    if "Explain" not in vars(RerankServicer):
        pytest.skip("Explain is not implemented in this tree")
    requests = st.builds(
        lambda q, d, i, g, inc: pb.ExplainRequest(query=pb.Query(parts=q), document=d, instruction=i, grid_size=g,
                                                  include_query=inc),
        st.one_of(scorable_parts, st.lists(parts, max_size=2)), st.one_of(scorable_documents, documents),
        st.one_of(st.just(""), texts), st.one_of(st.integers(0, 4), uint32), st.booleans())

    @settings(max_examples=max(1, EXAMPLES // 7), **SETTINGS)
    @given(requests)
    def case(request):
        resp = check(fuzz, "Explain", lambda: fuzz.stub.Explain(request, timeout=TIME_BOUND + 5))
        if resp is not None:
            assert math.isfinite(resp.score) and 0.0 <= resp.score <= 1.0

    case()
    fuzz.assert_still_serving_identically()


def test_get_model_info_answers_after_the_attack(fuzz):
    info = fuzz.stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=TIME_BOUND)
    assert info.model and info.limits.max_documents_per_request == 150
    fuzz.assert_still_serving_identically()
