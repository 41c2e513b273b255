"""One ASGI middleware around every HTTP request: request id (read or made, echoed), bearer
auth on the API paths, the body size bound, any error into the one JSON body, and one observer
call per request (access log, metrics). Pure ASGI, so a client disconnect reaches the routes."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

from starlette.datastructures import Headers
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..observability.requests import RequestObserver, RequestRecord, current_record
from ..service import context as request_context
from ..service.errors import FieldViolation, TooLarge
from .status import reply_for

if TYPE_CHECKING:  # the same hook the gRPC interceptor calls
    from ..security import Authenticator

log = logging.getLogger(__name__)

# Everything else (the console's files, /health, /live, /openapi.json, /docs) is open, so
# probes and the console's login page work without a token.
PROTECTED_PREFIXES = ("/v1/", "/v2/", "/api/", "/rerank")


def _too_large(limit: int) -> TooLarge:
    return TooLarge([FieldViolation("body", f"the request body is over {limit >> 20} MiB")])


def _route_name(scope: Scope, routes: frozenset[str]) -> str:
    """The route's template (bounded cardinality for metrics), never a raw path a client made
    up; also for a request refused before routing (auth, size). No route: "unmatched"."""
    path = getattr(scope.get("route"), "path", None) or scope["path"]
    return path if path in routes else "unmatched"


class RequestMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        observers: Sequence[RequestObserver] = (),
        authenticator: Authenticator | None = None,
        max_body_bytes: int = 256 << 20,
        routes: frozenset[str] = frozenset(),
    ):
        self.app = app
        self.routes = routes
        self.observers = list(observers)
        self.authenticator = authenticator
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        headers = Headers(scope=scope)
        rid = request_context.new_request_id(headers.get("x-request-id"))
        token = request_context.request_id.set(rid)
        record = RequestRecord(traceparent=headers.get("traceparent", ""), tracestate=headers.get("tracestate", ""))
        record_token = current_record.set(record)
        status = 500
        responded = False

        async def send_with_id(message: Message) -> None:
            nonlocal status, responded
            if message["type"] == "http.response.start":
                responded, status = True, message["status"]
                message["headers"] = [*message.get("headers", []), (b"x-request-id", rid.encode())]
            await send(message)

        received = 0

        async def bounded_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body_bytes:
                    raise _too_large(self.max_body_bytes)
            return message

        try:
            if self.authenticator is not None and scope["path"].startswith(PROTECTED_PREFIXES):
                self.authenticator.check(headers.get("authorization"))
            declared = headers.get("content-length")
            if declared is not None and declared.isdigit() and int(declared) > self.max_body_bytes:
                raise _too_large(self.max_body_bytes)
            await self.app(scope, bounded_receive, send_with_id)
        except Exception as exc:
            if responded:  # too late for an error body; the connection just ends
                log.error("request %s failed after its response started", rid, exc_info=exc)
                raise
            reply = reply_for(exc, rid)
            await JSONResponse(reply.body(), reply.status, headers=reply.headers)(scope, receive, send_with_id)
        finally:
            request_context.request_id.reset(token)
            current_record.reset(record_token)
            self._done(scope, str(status if responded else 499), started, rid, record)

    def _done(self, scope: Scope, code: str, started: float, rid: str,
              record: RequestRecord | None = None) -> None:
        seconds = time.perf_counter() - started
        client = scope.get("client")
        peer = f"{client[0]}:{client[1]}" if client else ""
        route = _route_name(scope, self.routes)
        for observer in self.observers:
            try:
                observer.request_done("http", route, code, seconds, rid, peer, record)
            except Exception:  # an observer never breaks a request
                log.exception("request observer failed")
