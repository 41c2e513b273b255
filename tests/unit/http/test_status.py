"""The one HTTP status table and error body."""

from __future__ import annotations

import pytest

from lychee_grpc.http.status import STATUS, reply_for
from lychee_grpc.service.errors import (
    Cancelled,
    DeadlineExpired,
    ErrorKind,
    FieldViolation,
    InvalidInput,
    NotReady,
    Overloaded,
    TooLarge,
    Unauthenticated,
)


def test_every_error_kind_has_an_http_status():
    assert set(STATUS) == set(ErrorKind)


@pytest.mark.parametrize(("exc", "status"), [
    (InvalidInput([FieldViolation("documents[0].text", "empty")]), 422),
    (TooLarge([FieldViolation("documents", "over 150")]), 413),
    (Overloaded("queue full", retry_after=0.2), 429),
    (NotReady("loading"), 503),
    (DeadlineExpired("late"), 504),
    (Cancelled("gone"), 499),
    (Unauthenticated("no token"), 401),
    (RuntimeError("secret internals"), 500),
])
def test_errors_map_to_their_status(exc, status):
    assert reply_for(exc, "rid").status == status


def test_body_names_code_message_violations_and_request_id():
    body = reply_for(InvalidInput([FieldViolation("query.image", "not valid base64")]), "r-1").body()
    assert body == {"error": {"code": "invalid_argument", "message": "query.image: not valid base64",
                              "field_violations": [{"field": "query.image", "description": "not valid base64"}],
                              "request_id": "r-1"}}


def test_overload_says_when_to_retry_in_whole_seconds():
    assert reply_for(Overloaded("full", retry_after=0.2), "r").headers["Retry-After"] == "1"
    assert reply_for(Overloaded("full", retry_after=2.5), "r").headers["Retry-After"] == "3"


def test_unauthenticated_asks_for_a_bearer_token():
    assert reply_for(Unauthenticated("no"), "r").headers == {"WWW-Authenticate": "Bearer"}


def test_internal_errors_keep_their_text_out_of_the_body():
    reply = reply_for(RuntimeError("secret internals"), "r-9")
    assert "secret" not in reply.message and "r-9" in reply.message
