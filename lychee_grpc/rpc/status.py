"""The one table from error kinds to gRPC status codes, with google.rpc details."""

from __future__ import annotations

from google.protobuf import any_pb2, duration_pb2
from google.protobuf.message import Message
from google.rpc import code_pb2, error_details_pb2, status_pb2  # pyright: ignore[reportMissingTypeStubs]  # a namespace package; its modules carry .pyi

from ..service.errors import ErrorKind, kind_of, retry_after_of, violations_of

CODES = {
    ErrorKind.INVALID: code_pb2.INVALID_ARGUMENT,
    # A per-request limit: the same request can never pass, so it is not overload.
    ErrorKind.TOO_LARGE: code_pb2.INVALID_ARGUMENT,
    ErrorKind.OVERLOADED: code_pb2.RESOURCE_EXHAUSTED,
    ErrorKind.UNAVAILABLE: code_pb2.UNAVAILABLE,
    ErrorKind.DEADLINE: code_pb2.DEADLINE_EXCEEDED,
    ErrorKind.CANCELLED: code_pb2.CANCELLED,
    ErrorKind.UNAUTHENTICATED: code_pb2.UNAUTHENTICATED,
    ErrorKind.INTERNAL: code_pb2.INTERNAL,
}


def _pack(message: Message) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


def to_status(exc: BaseException, request_id: str) -> status_pb2.Status:
    kind = kind_of(exc)
    if kind is ErrorKind.INTERNAL:
        # The message names the request id of the log line; the exception's text may hold
        # internals, so it stays in the log.
        return status_pb2.Status(
            code=code_pb2.INTERNAL, message=f"internal error ({type(exc).__name__}); request id {request_id}"
        )
    details: list[any_pb2.Any] = []
    violations = violations_of(exc)
    if violations:
        details.append(
            _pack(
                error_details_pb2.BadRequest(
                    field_violations=[
                        error_details_pb2.BadRequest.FieldViolation(field=v.field, description=v.description)
                        for v in violations
                    ]
                )
            )
        )
    retry_after = retry_after_of(exc)
    if retry_after is not None:
        delay = duration_pb2.Duration()
        delay.FromMilliseconds(max(1, round(retry_after * 1000)))
        details.append(_pack(error_details_pb2.RetryInfo(retry_delay=delay)))
    return status_pb2.Status(code=CODES[kind], message=f"{exc} (request id {request_id})", details=details)
