"""The one table from error kinds to gRPC codes and details."""

from __future__ import annotations

import pytest
from google.rpc import code_pb2, error_details_pb2

from lychee_grpc.rpc.status import to_status
from lychee_grpc.service.errors import (
    Cancelled,
    DeadlineExpired,
    FieldViolation,
    InvalidInput,
    NotReady,
    Overloaded,
    TooLarge,
    Unauthenticated,
)


@pytest.mark.parametrize(
    ("exc", "code"),
    [
        (InvalidInput([FieldViolation("documents[0]", "empty")]), code_pb2.INVALID_ARGUMENT),
        (TooLarge([FieldViolation("documents", "1001 documents")]), code_pb2.INVALID_ARGUMENT),
        (Overloaded("queue is full", retry_after=0.25), code_pb2.RESOURCE_EXHAUSTED),
        (NotReady("loading"), code_pb2.UNAVAILABLE),
        (DeadlineExpired("late"), code_pb2.DEADLINE_EXCEEDED),
        (Cancelled("gone"), code_pb2.CANCELLED),
        (Unauthenticated("no token"), code_pb2.UNAUTHENTICATED),
        (RuntimeError("CUDA error: device-side assert"), code_pb2.INTERNAL),
    ],
)
def test_every_kind_has_its_code_and_the_request_id(exc, code):
    status = to_status(exc, "req-42")
    assert status.code == code
    assert "req-42" in status.message


def test_invalid_input_carries_bad_request_field_paths():
    status = to_status(InvalidInput([FieldViolation("documents[3].parts[0].image", "not an image")]), "r")
    bad = error_details_pb2.BadRequest()
    assert status.details[0].Unpack(bad)
    assert [v.field for v in bad.field_violations] == ["documents[3].parts[0].image"]


def test_overload_carries_a_retry_delay():
    status = to_status(Overloaded("queue is full", retry_after=1.5), "r")
    info = error_details_pb2.RetryInfo()
    assert status.details[0].Unpack(info)
    assert info.retry_delay.ToMilliseconds() == 1500


def test_internal_errors_do_not_leak_their_text():
    status = to_status(RuntimeError("secret path /models/x"), "req-7")
    assert "secret" not in status.message
    assert "RuntimeError" in status.message and "req-7" in status.message
