"""Applied to every lychee.v1 RPC, present and future: request id, bearer auth, junk bodies,
errors -> status (rpc/status.py), and one observer call per RPC (access log, metrics)."""

from __future__ import annotations

import inspect
import logging
import time
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterable
from typing import TYPE_CHECKING, Any

import grpc
from grpc_status import rpc_status

from ..observability.requests import RequestObserver, RequestRecord, current_record
from ..security import Authenticator
from ..service import context as request_context
from ..service.errors import ErrorKind, FieldViolation, InvalidInput, Unauthenticated, kind_of
from .status import CODES, to_status
from .stream_inbox import StreamInbox

log = logging.getLogger(__name__)

if TYPE_CHECKING:  # grpc's classes are generic in its stubs only
    # The interceptor wraps every method's handler, whatever its messages: requests and responses
    # are Any here (each servicer method types its own).
    Context = grpc.aio.ServicerContext[Any, Any]
    Handler = grpc.RpcMethodHandler[Any, Any]

LYCHEE_PREFIX = "/lychee.v1."
HEALTH_PREFIX = "/grpc.health.v1."
REFLECTION_PREFIX = "/grpc.reflection."


def needs_token(method: str, authenticate_reflection: bool = False) -> bool:
    """Health never needs a token (probes and load balancers carry none); reflection only when
    asked; every other method, present or future, does."""
    if method.startswith(HEALTH_PREFIX):
        return False
    if method.startswith(REFLECTION_PREFIX):
        return authenticate_reflection
    return True


class _Junk:
    """A request body that did not parse: answered INVALID_ARGUMENT by the interceptor instead
    of grpc's own INTERNAL/UNKNOWN with a traceback per call."""

    def __init__(self, error: Exception, size: int):
        self.error = error
        self.size = size


class _RateLimitedLog:
    def __init__(self, interval: float = 60.0):
        self.interval = interval
        self._last = -interval
        self._suppressed = 0

    def warning(self, message: str, *args: object) -> None:
        now = time.monotonic()
        if now - self._last >= self.interval:
            extra = f" ({self._suppressed} more since the last such line)" if self._suppressed else ""
            log.warning(message + extra, *args)
            self._last, self._suppressed = now, 0
        else:
            self._suppressed += 1


def _tolerant(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    if deserializer is None:
        return None

    def parse(data: bytes) -> Any:  # the method's request message, or _Junk
        try:
            return deserializer(data)
        except Exception as exc:
            return _Junk(exc, len(data))

    return parse


class ServiceInterceptor:
    """Wraps each method handler once, when it is registered (rpc/server.py): a grpc.aio server
    interceptor runs again on every call (its coroutine, the handler rebuilt), which cost the
    event loop ~0.25 ms per call (bench/RESULTS.md, "The per-call cost")."""

    def __init__(
        self,
        observers: list[RequestObserver] | None = None,
        authenticator: Authenticator | None = None,
        authenticate_reflection: bool = False,
    ):
        self.observers = observers or []
        self.authenticator = authenticator
        self.authenticate_reflection = authenticate_reflection
        self._junk_log = _RateLimitedLog()

    def wrap(self, full_method: str, handler: Handler) -> Handler:
        """`handler` of `full_method` ("/package.Service/Method") as every call of it runs."""
        if not full_method.startswith(LYCHEE_PREFIX):
            # health and (unless configured) reflection: untouched; anything else: the token only
            if self.authenticator is None or not needs_token(full_method, self.authenticate_reflection):
                return handler
            return _behind_token_check(handler, self.authenticator)
        method = full_method.rsplit("/", 1)[-1]
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                self._unary(method, _aio(handler.unary_unary)),
                request_deserializer=_tolerant(handler.request_deserializer),
                response_serializer=handler.response_serializer,
            )
        if handler.stream_stream is not None:
            return grpc.stream_stream_rpc_method_handler(
                self._stream(method, _aio(handler.stream_stream)),
                request_deserializer=_tolerant(handler.request_deserializer),
                response_serializer=handler.response_serializer,
            )
        return handler

    # ---- the per-call steps -------------------------------------------------------------
    def _open(self, context: Context) -> str:
        """The call's request id (the caller's or a new one), its record, and the token check."""
        metadata = {k: v for k, v in (context.invocation_metadata() or ()) if isinstance(v, str)}
        rid = request_context.new_request_id(metadata.get("x-request-id"))
        request_context.request_id.set(rid)
        current_record.set(RequestRecord(traceparent=metadata.get("traceparent", ""),
                                         tracestate=metadata.get("tracestate", "")))
        if self.authenticator is not None:
            self.authenticator.check(metadata.get("authorization"))
        return rid

    def _junk(self, method: str, junk: _Junk) -> InvalidInput:
        self._junk_log.warning("%s: a request body that is not a valid message: %s", method, junk.error)
        return InvalidInput([FieldViolation("request", f"the body is not a valid lychee.v1 {method} request")])

    async def _fail(self, context: Context, method: str, exc: Exception, rid: str) -> None:
        if kind_of(exc) is ErrorKind.INTERNAL:
            log.error("%s failed (request id %s)", method, rid, exc_info=exc)
        status = rpc_status.to_status(to_status(exc, rid))  # pyright: ignore[reportUnknownMemberType]  # grpc_status's stub: google.rpc untyped there
        await context.abort(status.code, status.details, (*status.trailing_metadata, *_echo(rid)))

    def _done(self, method: str, code: str, started: float, rid: str, peer: str) -> None:
        seconds = time.perf_counter() - started
        record = current_record.get()
        for observer in self.observers:
            try:
                observer.request_done("grpc", method, code, seconds, rid, peer, record)
            except Exception:  # an observer never breaks a call
                log.exception("request observer failed")

    def _unary(self, method: str, behaviour: Callable[..., Awaitable[Any]]) -> Callable[[Any, Context], Awaitable[Any]]:
        async def call(request: Any, context: Context) -> Any:
            # The peer is read now: once a client has cancelled, the call's context is gone, and
            # context.peer() then crashes the process (grpcio 1.85, seen on a cancelled stream).
            started, rid, code, peer = time.perf_counter(), "", "CANCELLED", context.peer() or ""
            try:
                rid = self._open(context)
                # In the trailers, which go with the response: initial metadata of its own is one
                # more batch for grpc's core (~0.2 ms of the event loop per call).
                context.set_trailing_metadata(_echo(rid))
                if isinstance(request, _Junk):
                    raise self._junk(method, request)
                response = await behaviour(request, context)
                code = "OK"
                return response
            except grpc.aio.AbortError:
                code = _code_name(context)
                raise
            except Exception as exc:
                code = _status_code(exc).name
                await self._fail(context, method, exc, rid)
            finally:
                self._done(method, code, started, rid, peer)

        return call

    def _stream(self, method: str, behaviour: Callable[..., AsyncIterator[Any]]
                ) -> Callable[[AsyncIterator[Any], Context], AsyncIterator[Any]]:
        async def call(request_iterator: AsyncIterator[Any], context: Context) -> AsyncIterator[Any]:
            started, rid, code, peer = time.perf_counter(), "", "CANCELLED", context.peer() or ""  # see _unary

            def accept(message: object) -> object:
                if isinstance(message, _Junk):
                    raise self._junk(method, message)
                return message

            inbox = StreamInbox(request_iterator, accept, _size)
            try:
                rid = self._open(context)
                # A stream's headers come before its first result: the id is there at once.
                await context.send_initial_metadata(_echo(rid))
                async for response in behaviour(inbox, context):
                    yield response
                code = "OK"
            except grpc.aio.AbortError:
                code = _code_name(context)
                raise
            except Exception as exc:
                code = _status_code(exc).name
                await inbox.drain()
                await self._fail(context, method, exc, rid)
            finally:
                await inbox.close()
                self._done(method, code, started, rid, peer)

        return call


def _echo(request_id: str) -> tuple[tuple[str, str], ...]:
    return (("x-request-id", request_id),) if request_id else ()


def _behind_token_check(handler: Handler, authenticator: Authenticator) -> Handler:
    """`handler` behind the token check alone (no request id, no error mapping: not our service)."""

    async def refuse_unless_authorized(context: Context) -> None:
        metadata = {k: v for k, v in (context.invocation_metadata() or ()) if isinstance(v, str)}
        try:
            authenticator.check(metadata.get("authorization"))
        except Unauthenticated as exc:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, str(exc))

    # Each wrapper is used only for the kind its handler has (`kinds` below).
    async def unary_unary(request: Any, context: Context) -> Any:
        await refuse_unless_authorized(context)
        return await _maybe_await(_aio(handler.unary_unary)(request, context))

    async def unary_stream(request: Any, context: Context) -> AsyncIterator[Any]:
        await refuse_unless_authorized(context)
        async for response in _aiter(_aio(handler.unary_stream)(request, context)):
            yield response

    async def stream_unary(request_iterator: AsyncIterator[Any], context: Context) -> Any:
        await refuse_unless_authorized(context)
        return await _maybe_await(_aio(handler.stream_unary)(request_iterator, context))

    async def stream_stream(request_iterator: AsyncIterator[Any], context: Context) -> AsyncIterator[Any]:
        await refuse_unless_authorized(context)
        async for response in _aiter(_aio(handler.stream_stream)(request_iterator, context)):
            yield response

    kinds: tuple[tuple[object, Callable[..., Any], Callable[..., Handler]], ...] = (
        (handler.unary_unary, unary_unary, grpc.unary_unary_rpc_method_handler),
        (handler.unary_stream, unary_stream, grpc.unary_stream_rpc_method_handler),
        (handler.stream_unary, stream_unary, grpc.stream_unary_rpc_method_handler),
        (handler.stream_stream, stream_stream, grpc.stream_stream_rpc_method_handler),
    )
    _, wrapper, make = next(kind for kind in kinds if kind[0] is not None)
    return make(wrapper, request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer)


def _aio(behaviour: object) -> Callable[..., Any]:
    """A handler's behaviour as grpc.aio calls it (async, with an aio context): the stubs type
    RpcMethodHandler for the sync server only."""
    if not callable(behaviour):
        raise TypeError(f"{behaviour!r} is not a method handler's behaviour")
    return behaviour


async def _maybe_await(value: Any) -> Any:  # a handler's response, or an awaitable of it
    return await value if inspect.isawaitable(value) else value


async def _aiter(responses: AsyncIterable[Any] | Iterable[Any]) -> AsyncIterator[Any]:
    if isinstance(responses, AsyncIterable):
        async for response in responses:
            yield response
    else:
        for response in responses:
            yield response


def _size(message: object) -> int:
    return message.size if isinstance(message, _Junk) else message.ByteSize()  # type: ignore[attr-defined]


def _status_code(exc: BaseException) -> grpc.StatusCode:
    value = CODES[kind_of(exc)]
    return next(c for c in grpc.StatusCode if c.value[0] == value)


def _code_name(context: Context) -> str:
    code = context.code()
    # None until a code is set, whatever the stub says.
    return code.name if isinstance(code, grpc.StatusCode) else "UNKNOWN"  # pyright: ignore[reportUnnecessaryIsInstance]
