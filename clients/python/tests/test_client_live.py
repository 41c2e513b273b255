"""The client against a live server, from an environment without torch."""

from __future__ import annotations

import importlib.util
import io
import zlib

import grpc
import pytest
from lychee_client import (
    AsyncLycheeClient,
    LycheeClient,
    band_name,
    field_violations,
    image,
    pb,
    retry_after,
    text,
)


def _png(width: int, height: int, rgb: tuple[int, int, int]) -> bytes:
    """A solid PNG, written by hand (the client has no imaging dependency)."""
    import struct

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    raw = b"".join(b"\x00" + bytes(rgb) * width for _ in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    out = io.BytesIO()
    out.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))
    return out.getvalue()


def test_this_environment_has_no_torch():
    assert importlib.util.find_spec("torch") is None
    assert importlib.util.find_spec("transformers") is None


def test_rerank_text_and_image_documents_best_first(target):
    with LycheeClient(target, timeout=60) as client:
        resp = client.rerank("retro denim jacket", ["vintage denim jacket", "green tea", [_png(32, 32, (20, 40, 200))]],
                             top_n=2, return_documents=True)
        info = client.model_info()
    assert len(resp.results) == 2
    assert resp.results[0].score >= resp.results[1].score
    assert band_name(resp.results[0].band) in ("strong", "medium", "weak")
    assert resp.results[0].document.parts
    assert info.random_weights and info.limits.max_documents_per_request > 0


def test_min_score_drops_and_counts(target):
    with LycheeClient(target, timeout=60) as client:
        full = client.rerank("denim", ["a", "b", "c", "d"])
        cut = full.results[1].score
        resp = client.rerank("denim", ["a", "b", "c", "d"], min_score=cut)
    assert len(resp.results) + resp.dropped_documents == 4
    assert all(r.score >= cut for r in resp.results)


def test_stream_scores_each_document_then_ranks(target):
    with LycheeClient(target, timeout=60) as client:
        events = list(client.rerank_stream("denim", [["a", "b"], [[text("c"), image(_png(16, 16, (0, 0, 0)))]]]))
    assert sum(e.HasField("scored") for e in events) == 3
    assert len(events[-1].ranking.results) == 3


def test_explain_attributes_each_word(target):
    with LycheeClient(target, timeout=60) as client:
        resp = client.explain("denim jacket", "vintage blue denim jacket")
    assert [f.text.strip() for f in resp.fragments] == ["vintage", "blue", "denim", "jacket"]
    for f in resp.fragments:
        assert f.attribution == pytest.approx(resp.score - f.occluded_score, abs=1e-5)


def test_invalid_input_names_the_field(target):
    with LycheeClient(target, timeout=60) as client, pytest.raises(grpc.RpcError) as info:
        client.rerank("denim", ["fine", [b"not an image"]])
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert [f for f, _ in field_violations(info.value)] == ["documents[1].parts[0].image"]


def test_overload_carries_a_retry_delay(small_target):
    with LycheeClient(small_target, timeout=60) as client, pytest.raises(grpc.RpcError) as info:
        client.rerank("denim", ["a", "b", "c", "d", "e"])
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    delay = retry_after(info.value)
    assert delay is not None and delay > 0


async def test_async_client(target):
    async with AsyncLycheeClient(target, timeout=60) as client:
        resp = await client.rerank(pb.Query(parts=[text("denim")]), ["a", "b"])
        explained = await client.explain("denim", "blue denim")
    assert len(resp.results) == 2
    assert len(explained.fragments) == 2
