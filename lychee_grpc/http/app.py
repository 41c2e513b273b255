"""The HTTP application: REST routes, probes, the web console's static files and OpenAPI, over
the same Service and Lifecycle as gRPC."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from .. import __version__
from ..lifecycle import Lifecycle
from ..service import Service
from ..service import context as request_context
from ..service.errors import EngineError, FieldViolation
from .middleware import RequestMiddleware
from .routes import api, probes
from .status import MALFORMED, STATUS, ErrorKind, ErrorReply, reply_for

if TYPE_CHECKING:
    from ..observability.requests import RequestObserver
    from ..security import Authenticator

CONSOLE = Path(__file__).resolve().parent / "console"

_HTTP_CODES = {404: "not_found", 405: "method_not_allowed"}


def field_path(loc: Sequence[str | int]) -> str:
    """pydantic's location ("body", "documents", 3, "image") as "documents[3].image"."""
    path = ""
    for item in loc[1:] if loc and loc[0] == "body" else loc:
        path += f"[{item}]" if isinstance(item, int) else (f".{item}" if path else str(item))
    return path or "body"


def _message(error: dict[str, Any]) -> str:  # one of pydantic's error dicts
    # pydantic prefixes a validator's own words with "Value error, "; the field name says enough.
    return re.sub(r"^(Value|Assertion) error, ", "", error.get("msg", "invalid"))


def _respond(reply: ErrorReply) -> JSONResponse:
    return JSONResponse(reply.body(), reply.status, headers=reply.headers)


async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    errors = list(exc.errors())
    rid = request_context.request_id.get()
    if any(e.get("type") == "json_invalid" for e in errors):
        return _respond(ErrorReply(MALFORMED, ErrorKind.INVALID.value, "the body is not valid JSON", rid,
                                   [FieldViolation("body", "not valid JSON")]))
    violations = [FieldViolation(field_path(e.get("loc", ())), _message(e)) for e in errors]
    summary = "; ".join(f"{v.field}: {v.description}" for v in violations[:5])
    return _respond(ErrorReply(STATUS[ErrorKind.INVALID], ErrorKind.INVALID.value, summary, rid, violations))


async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    rid = request_context.request_id.get()
    if isinstance(exc.__cause__, EngineError):  # raised while FastAPI read the body (its size bound)
        return _respond(reply_for(exc.__cause__, rid))
    code = _HTTP_CODES.get(exc.status_code, ErrorKind.INVALID.value if exc.status_code < 500 else "internal")
    return _respond(ErrorReply(exc.status_code, code, str(exc.detail), rid, headers=dict(exc.headers or {})))


def create_app(
    service: Service,
    lifecycle: Lifecycle,
    authenticator: Authenticator | None = None,
    observers: Sequence[RequestObserver] = (),
    max_body_bytes: int = 256 << 20,
) -> FastAPI:
    app = FastAPI(
        title="lychee-grpc REST API",
        version=__version__,
        summary="Multimodal reranking with Lychee-Rerank-MM: the same service as gRPC lychee.v1",
        docs_url="/docs",
        redoc_url=None,
    )
    app.state.service = service
    app.state.lifecycle = lifecycle
    app.include_router(api)
    app.include_router(probes)
    # Starlette types a handler as taking any Exception; each takes the class it is registered for.
    app.add_exception_handler(RequestValidationError, _validation_error)  # pyright: ignore[reportArgumentType]
    app.add_exception_handler(StarletteHTTPException, _http_error)  # pyright: ignore[reportArgumentType]
    paths = {route.path for router in (api, probes) for route in router.routes if isinstance(route, APIRoute)}
    routes = frozenset(paths | {"/openapi.json", "/docs"})
    app.add_middleware(RequestMiddleware, observers=observers, authenticator=authenticator,
                       max_body_bytes=max_body_bytes, routes=routes)
    # Last: it answers every path the routes above do not.
    app.mount("/", StaticFiles(directory=CONSOLE, html=True), name="console")
    return app
