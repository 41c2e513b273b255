"""Truncation over the wire: per request, by the server default, and the response's counts."""

from __future__ import annotations

import grpc
import pytest

from lychee_grpc.client import AsyncLycheeClient, make_request
from lychee_grpc.proto import lychee_pb2 as pb

from .ops_server import ops_server

LONG = " ".join(f"word{k} blue denim jacket" for k in range(200))


async def test_a_request_asking_for_truncation_gets_its_long_documents_cut_and_counted(client):
    request = make_request("denim", [LONG, "denim jacket", LONG])
    request.truncation = pb.TRUNCATION_END
    request.max_tokens_per_document = 64
    response = await client.stub.Rerank(request, timeout=30)
    assert response.truncated_documents == 2
    assert {r.index for r in response.results if r.truncated} == {0, 2}


async def test_without_truncation_an_over_long_document_is_invalid_argument(client):
    request = make_request("denim", [LONG, "denim jacket"])
    request.max_tokens_per_document = 64
    with pytest.raises(grpc.RpcError) as err:
        await client.stub.Rerank(request, timeout=30)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "documents[0]" in err.value.details()


async def test_a_request_limit_over_the_servers_is_refused_naming_the_field(client):
    request = make_request("denim", ["denim jacket"])
    request.max_tokens_per_document = 100_000
    with pytest.raises(grpc.RpcError) as err:
        await client.stub.Rerank(request, timeout=30)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "max_tokens_per_document" in err.value.details()


async def test_the_server_default_truncation_applies_when_the_request_leaves_it_unset(loaded, tiny_model_dir):
    async with ops_server(loaded, tiny_model_dir, default_truncation="end") as app, AsyncLycheeClient(
        f"127.0.0.1:{app.port}", timeout=30
    ) as client:
        response = await client.rerank("denim", [LONG * 3, "denim jacket"])  # over the server's 512 tokens
        assert response.truncated_documents == 1
        request = make_request("denim", [LONG * 3])
        request.truncation = pb.TRUNCATION_NONE  # a request may still ask for refusal
        with pytest.raises(grpc.RpcError) as err:
            await client.stub.Rerank(request, timeout=30)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
