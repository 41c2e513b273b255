"""The one place where domain errors become gRPC statuses (with google.rpc details)."""

from __future__ import annotations

import functools
import inspect
import logging

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from .engine.errors import Cancelled, DeadlineExpired, InvalidInput, NotReady, Overloaded

log = logging.getLogger(__name__)


def to_status(exc: BaseException) -> status_pb2.Status:
    if isinstance(exc, InvalidInput):
        details = error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(field=v.field, description=v.description)
                for v in exc.violations
            ]
        )
        packed = any_pb2.Any()
        packed.Pack(details)
        return status_pb2.Status(code=code_pb2.INVALID_ARGUMENT, message=str(exc), details=[packed])
    if isinstance(exc, Overloaded):
        return status_pb2.Status(code=code_pb2.RESOURCE_EXHAUSTED, message=str(exc))
    if isinstance(exc, NotReady):
        return status_pb2.Status(code=code_pb2.UNAVAILABLE, message=str(exc))
    if isinstance(exc, DeadlineExpired):
        return status_pb2.Status(code=code_pb2.DEADLINE_EXCEEDED, message=str(exc))
    if isinstance(exc, Cancelled):
        return status_pb2.Status(code=code_pb2.CANCELLED, message=str(exc))
    log.error("internal error", exc_info=exc)
    return status_pb2.Status(code=code_pb2.INTERNAL, message=f"internal error: {type(exc).__name__}")


async def abort(context: grpc.aio.ServicerContext, exc: BaseException) -> None:
    await context.abort_with_status(rpc_status.to_status(to_status(exc)))


def mapped(method):
    """Wraps a servicer method (unary or response-streaming) so any domain error it raises
    reaches the client as its canonical status."""
    if inspect.isasyncgenfunction(method):

        @functools.wraps(method)
        async def stream(self, request, context):
            try:
                async for response in method(self, request, context):
                    yield response
            except Exception as exc:
                if _is_abort(exc):
                    raise
                await abort(context, exc)

        return stream

    @functools.wraps(method)
    async def unary(self, request, context):
        try:
            return await method(self, request, context)
        except Exception as exc:
            if _is_abort(exc):
                raise
            await abort(context, exc)

    return unary


def _is_abort(exc: BaseException) -> bool:
    # context.abort() raises this to end the RPC; it must pass through untouched.
    return type(exc).__name__ == "AbortError"
