"""Back-off on overload: the delay a RESOURCE_EXHAUSTED status asks for through RetryInfo."""

from __future__ import annotations

import time

import grpc
import pytest
from google.protobuf import any_pb2, duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2

from lychee_grpc.eval.run import _retry_delay, _with_retry


def overloaded(delay_s: float | None) -> grpc.aio.AioRpcError:
    status = status_pb2.Status(code=code_pb2.RESOURCE_EXHAUSTED, message="queue full")
    if delay_s is not None:
        packed = any_pb2.Any()
        packed.Pack(error_details_pb2.RetryInfo(retry_delay=duration_pb2.Duration(nanos=int(delay_s * 1e9))))
        status.details.append(packed)
    trailing = grpc.aio.Metadata(("grpc-status-details-bin", status.SerializeToString()))
    return grpc.aio.AioRpcError(grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.aio.Metadata(), trailing, "queue full")


def test_retry_delay_is_read_from_the_status_details():
    assert _retry_delay(overloaded(0.25)) == pytest.approx(0.25)
    assert _retry_delay(overloaded(None)) is None


async def test_overload_is_retried_after_the_delay_asked_for():
    calls = []

    async def call():
        calls.append(time.monotonic())
        if len(calls) < 3:
            raise overloaded(0.05)
        return "ok"

    assert await _with_retry(call, max_retries=4) == "ok"
    assert len(calls) == 3 and calls[2] - calls[0] >= 0.09


async def test_other_errors_and_exhausted_retries_are_raised():
    async def invalid():
        raise grpc.aio.AioRpcError(grpc.StatusCode.INVALID_ARGUMENT, grpc.aio.Metadata(), grpc.aio.Metadata(), "bad")

    with pytest.raises(grpc.aio.AioRpcError) as err:
        await _with_retry(invalid, max_retries=4)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT

    async def always():
        raise overloaded(0.001)

    with pytest.raises(grpc.aio.AioRpcError):
        await _with_retry(always, max_retries=2)
