"""RerankStreams that carry unreadable messages, from grpcio's asyncio client, several at a time:
every one ends INVALID_ARGUMENT with a BadRequest detail, never INTERNAL, however many messages
follow the bad one (RELIABILITY.md, "Junk on a stream"). The server runs on a loop and thread of
its own (the fuzz fixture), as a separate process would: on one shared loop the race never shows."""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from hypothesis import given, settings
from hypothesis import strategies as st

from lychee_grpc.proto import lychee_pb2 as pb
from lychee_grpc.rpc.stream_inbox import DRAIN_IDLE_SECONDS, DRAIN_SECONDS

from .cases import EXAMPLES, SETTINGS

STREAM = "/lychee.v1.RerankService/RerankStream"
CONCURRENCY = 8


def options_message(n_docs: int = 0) -> bytes:
    return pb.RerankStreamRequest(
        options=pb.StreamOptions(query=pb.Query(parts=[pb.Part(text="retro denim jacket")])),
        documents=[pb.Document(parts=[pb.Part(text=f"denim jacket {k}")]) for k in range(n_docs)],
    ).SerializeToString()


def documents_message(first: int, n: int) -> bytes:
    return pb.RerankStreamRequest(
        documents=[pb.Document(parts=[pb.Part(text=f"title number {first + k}")]) for k in range(n)]
    ).SerializeToString()


def unreadable(rng: random.Random) -> bytes:
    """Never a message: the first tag has wire type 7, which protobuf does not define."""
    return b"\xff" + rng.randbytes(rng.randint(0, 79))


def bad_request_fields(err: grpc.aio.AioRpcError) -> list[str]:
    status = rpc_status.from_call(err)
    fields: list[str] = []
    for detail in status.details if status is not None else ():
        bad = error_details_pb2.BadRequest()
        if detail.Unpack(bad):
            fields += [v.field for v in bad.field_violations]
    return fields


async def _send(channel: grpc.aio.Channel, messages: list[bytes]) -> tuple[str, list[str]]:
    call = channel.stream_stream(STREAM)

    async def requests():
        for message in messages:
            yield message

    try:
        async for _ in call(requests(), timeout=30):
            pass
    except grpc.aio.AioRpcError as err:
        return err.code().name, bad_request_fields(err)
    return "OK", []


def send_all(port: int, streams: list[list[bytes]]) -> list[tuple[str, list[str]]]:
    async def main() -> list[tuple[str, list[str]]]:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            gate = asyncio.Semaphore(CONCURRENCY)

            async def one(messages: list[bytes]) -> tuple[str, list[str]]:
                async with gate:
                    return await _send(channel, messages)

            return await asyncio.gather(*(one(m) for m in streams))

    return asyncio.run(main())


def assert_all_invalid_argument(fuzz, results: list[tuple[str, list[str]]], seconds: float) -> None:
    for code, _ in results:
        fuzz.record("RerankStream:junk", getattr(grpc.StatusCode, code), seconds / len(results))
    assert Counter(code for code, _ in results) == {"INVALID_ARGUMENT": len(results)}
    assert all(fields for _, fields in results), "INVALID_ARGUMENT without a BadRequest field violation"


def test_two_and_three_message_junk_streams_all_end_invalid_argument(fuzz):
    """The reported case: random bytes, 1-80 per message, two or three messages, 200 streams."""
    rng = random.Random(23)
    streams = [[rng.randbytes(rng.randint(1, 80)) for _ in range(2 + k % 2)] for k in range(200)]
    started = time.perf_counter()
    results = send_all(fuzz.app.port, streams)
    assert_all_invalid_argument(fuzz, results, time.perf_counter() - started)
    fuzz.assert_still_serving_identically()


def test_junk_after_a_valid_first_message_is_invalid_argument_naming_the_request(fuzz):
    rng = random.Random(7)
    streams = [[options_message(3), *(unreadable(rng) for _ in range(1 + k % 3))] for k in range(64)]
    started = time.perf_counter()
    results = send_all(fuzz.app.port, streams)
    assert_all_invalid_argument(fuzz, results, time.perf_counter() - started)
    assert {tuple(fields) for _, fields in results} == {("request",)}
    fuzz.assert_still_serving_identically()


def test_junk_after_half_of_a_100_document_list_is_invalid_argument(fuzz):
    """Fifty documents are already being scored when the junk arrives; the other fifty follow it."""
    rng = random.Random(11)

    def stream() -> list[bytes]:
        first_half = [options_message(10), *(documents_message(10 * k, 10) for k in range(1, 5))]
        second_half = [documents_message(50 + 10 * k, 10) for k in range(5)]
        return [*first_half, unreadable(rng), *second_half]

    started = time.perf_counter()
    results = send_all(fuzz.app.port, [stream() for _ in range(16)])
    assert_all_invalid_argument(fuzz, results, time.perf_counter() - started)
    assert {tuple(fields) for _, fields in results} == {("request",)}
    fuzz.assert_still_serving_identically()


def test_random_multi_message_junk_streams_concurrently(fuzz):
    """Valid messages and unreadable ones in any order, at least one unreadable: INVALID_ARGUMENT,
    eight streams at a time."""
    valid = st.one_of(st.integers(0, 4).map(options_message),
                      st.tuples(st.integers(0, 100), st.integers(1, 6)).map(lambda a: documents_message(*a)))
    junk = st.binary(max_size=79).map(lambda b: b"\xff" + b)
    stream = st.tuples(st.lists(st.one_of(valid, junk), max_size=5), junk, st.lists(st.one_of(valid, junk),
                                                                                    max_size=5))

    @settings(max_examples=max(1, EXAMPLES // 17), **SETTINGS)
    @given(st.lists(stream.map(lambda t: [*t[0], t[1], *t[2]]), min_size=CONCURRENCY, max_size=CONCURRENCY))
    def case(streams):
        started = time.perf_counter()
        assert_all_invalid_argument(fuzz, send_all(fuzz.app.port, streams), time.perf_counter() - started)

    case()
    fuzz.assert_still_serving_identically()


def test_a_client_that_stays_open_after_junk_gets_its_status_after_the_idle_bound(fuzz):
    """No half-close: the server stops waiting once the stream has been quiet for the idle bound."""
    async def main() -> tuple[str, float]:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{fuzz.app.port}") as channel:
            call = channel.stream_stream(STREAM)()
            await call.write(b"\xff junk")
            started = time.perf_counter()
            try:
                await call.read()
            except grpc.aio.AioRpcError as err:
                return err.code().name, time.perf_counter() - started
            return "OK", time.perf_counter() - started

    code, seconds = asyncio.run(main())
    assert code == "INVALID_ARGUMENT"
    assert DRAIN_IDLE_SECONDS * 0.8 <= seconds < DRAIN_IDLE_SECONDS + 3


def test_a_client_that_never_stops_writing_costs_at_most_the_drain_bound(fuzz):
    async def main() -> float:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{fuzz.app.port}") as channel:
            call = channel.stream_stream(STREAM)()
            await call.write(b"\xff junk")
            started = time.perf_counter()
            try:
                while not call.done():
                    await call.write(documents_message(0, 4))
                    await asyncio.sleep(0.05)
            except (grpc.aio.AioRpcError, asyncio.InvalidStateError):
                pass
            await call.code()
            return time.perf_counter() - started

    assert asyncio.run(main()) < DRAIN_SECONDS + 3
    fuzz.assert_still_serving_identically()
