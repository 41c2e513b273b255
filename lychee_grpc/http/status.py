"""The one table from error kinds to HTTP status codes, and the one JSON error body:
`{"error": {"code", "message", "field_violations", "request_id"}}`. `code` is the error kind's
name, the same word whichever transport reports it."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any

from ..service.errors import ErrorKind, FieldViolation, kind_of, retry_after_of, violations_of

__all__ = ["MALFORMED", "STATUS", "ErrorKind", "ErrorReply", "reply_for"]

log = logging.getLogger(__name__)

STATUS = {
    ErrorKind.INVALID: 422,
    ErrorKind.TOO_LARGE: 413,
    ErrorKind.OVERLOADED: 429,
    ErrorKind.UNAVAILABLE: 503,
    ErrorKind.DEADLINE: 504,
    # nginx's "client closed request": nobody reads it, but logs and metrics tell it apart.
    ErrorKind.CANCELLED: 499,
    ErrorKind.UNAUTHENTICATED: 401,
    ErrorKind.INTERNAL: 500,
}

# A body that is not JSON at all: a client bug, not a field to fix.
MALFORMED = 400


@dataclass
class ErrorReply:
    status: int
    code: str
    message: str
    request_id: str
    field_violations: list[FieldViolation] = field(default_factory=list[FieldViolation])
    headers: dict[str, str] = field(default_factory=dict[str, str])

    def body(self) -> dict[str, Any]:  # JSON
        return {
            "error": {
                "code": self.code,
                "message": self.message,
                "field_violations": [{"field": v.field, "description": v.description} for v in self.field_violations],
                "request_id": self.request_id,
            }
        }


def reply_for(exc: BaseException, request_id: str) -> ErrorReply:
    kind = kind_of(exc)
    if kind is ErrorKind.INTERNAL:
        # The exception's text may hold internals: it goes to the log, the caller gets the id.
        log.error("request %s failed", request_id, exc_info=exc)
        return ErrorReply(500, kind.value, f"internal error ({type(exc).__name__}); request id {request_id}",
                          request_id)
    reply = ErrorReply(STATUS[kind], kind.value, str(exc), request_id, violations_of(exc))
    retry_after = retry_after_of(exc)
    if retry_after is not None:
        reply.headers["Retry-After"] = str(max(1, math.ceil(retry_after)))  # HTTP wants whole seconds
    if kind is ErrorKind.UNAUTHENTICATED:
        reply.headers["WWW-Authenticate"] = "Bearer"
    return reply
