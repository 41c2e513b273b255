"""The HTTP application: REST routes, probes, the web console's files and OpenAPI (its pages served
from a package, so /docs works offline), over the same Service and Lifecycle as gRPC.

Every path is a route: an unknown path is 404, a known one with another method 405 with `Allow`."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import fastapi_offline
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Route

from .. import __version__
from ..lifecycle import Lifecycle
from ..service import Service
from ..service import context as request_context
from ..service.errors import EngineError, FieldViolation
from .convert import json_type
from .middleware import RequestMiddleware
from .routes import BodyError, api, probes
from .schemas import TAGS
from .status import MALFORMED, STATUS, ErrorKind, ErrorReply, reply_for

if TYPE_CHECKING:
    from ..observability.requests import RequestObserver
    from ..security import Authenticator

CONSOLE = Path(__file__).resolve().parent / "console"
# Swagger UI and ReDoc as files of a package (fastapi-offline), not from a CDN.
DOCS_ASSETS = Path(str(fastapi_offline.__file__)).resolve().parent / "static"
# ReDoc is not offered: its page fetches its logo from its own CDN.
DOCS_ASSET_NAMES = ("swagger-ui-bundle.js", "swagger-ui.css", "favicon.png")

_HTTP_CODES = {404: "not_found", 405: "method_not_allowed"}

# What each pydantic type error expected, in JSON's words.
_EXPECTED = {
    "int_type": "an integer", "int_parsing": "an integer", "int_from_float": "an integer",
    "float_type": "a number", "float_parsing": "a number",
    "bool_type": "true or false", "bool_parsing": "true or false",
    "string_type": "a string", "list_type": "an array",
    "dict_type": "an object", "model_type": "an object", "model_attributes_type": "an object",
}


def field_path(loc: Sequence[str | int]) -> str:
    """pydantic's location ("body", "documents", 3, "<object>", "image") as "documents[3].image"
    (a union member's tag is not part of the JSON)."""
    path = ""
    for item in loc[1:] if loc and loc[0] == "body" else loc:
        if item in TAGS:
            continue
        path += f"[{item}]" if isinstance(item, int) else (f".{item}" if path else str(item))
    return path or "body"


def _shown(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False) if isinstance(value, str | int | float | bool) else ""
    return f" {text[:40]}" if text else ""


def describe(error: dict[str, Any]) -> str:  # one of pydantic's error dicts
    """One pydantic error in words a JSON caller acts on: the type expected and the one sent."""
    kind: str = error.get("type", "")
    given: Any = error.get("input")
    if kind in _EXPECTED:
        return f"expected {_EXPECTED[kind]}, got {json_type(given)}{_shown(given)}"
    if kind == "missing":
        return "required" if len(error.get("loc", ())) > 1 else "expected a JSON object"
    if kind == "extra_forbidden":
        return "unknown field: this endpoint does not take it (see docs/http.md or /docs for the fields it takes)"
    if kind == "literal_error":
        return f"expected {error.get('ctx', {}).get('expected', 'one of the listed values')}, got{_shown(given)}"
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
    violations = [FieldViolation(field_path(e.get("loc", ())), describe(e)) for e in errors]
    summary = "; ".join(f"{v.field}: {v.description}" for v in violations[:5])
    return _respond(ErrorReply(STATUS[ErrorKind.INVALID], ErrorKind.INVALID.value, summary, rid, violations))


async def _body_error(request: Request, exc: BodyError) -> JSONResponse:
    rid = request_context.request_id.get()
    return _respond(ErrorReply(exc.status, exc.code, str(exc), rid, [FieldViolation("body", str(exc))]))


async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    rid = request_context.request_id.get()
    if isinstance(exc.__cause__, EngineError):  # raised while FastAPI read the body (its size bound)
        return _respond(reply_for(exc.__cause__, rid))
    code = _HTTP_CODES.get(exc.status_code, ErrorKind.INVALID.value if exc.status_code < 500 else "internal")
    message = str(exc.detail)
    if exc.status_code == 404:
        message = f"no such path: {request.url.path} (the API is listed at /docs)"
    elif exc.status_code == 405:
        message = f"{request.method} is not served at {request.url.path}; it takes {(exc.headers or {}).get('Allow')}"
    return _respond(ErrorReply(exc.status_code, code, message, rid, headers=dict(exc.headers or {})))


def _file_routes(directory: Path, names: Sequence[str], prefix: str = "") -> list[Route]:
    """GET (and HEAD) routes for named files: each file a path of its own, so anything else is 404."""

    def endpoint(path: Path):
        async def serve(request: Request) -> FileResponse:
            return FileResponse(path)

        return serve

    return [Route(f"{prefix}/{name}", endpoint(directory / name), methods=["GET"]) for name in names]


def _docs_routes(app: FastAPI) -> list[Route]:
    assets = "/docs/assets"

    async def swagger(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return get_swagger_ui_html(
            openapi_url=f"{root}{app.openapi_url}", title=f"{app.title} - Swagger UI",
            swagger_js_url=f"{root}{assets}/swagger-ui-bundle.js", swagger_css_url=f"{root}{assets}/swagger-ui.css",
            swagger_favicon_url=f"{root}{assets}/favicon.png",
            # The default validator badge is fetched from swagger.io: nothing leaves this server.
            swagger_ui_parameters={"validatorUrl": None},
        )

    return [Route("/docs", swagger, methods=["GET"]), *_file_routes(DOCS_ASSETS, DOCS_ASSET_NAMES, assets)]


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
        docs_url=None,
        redoc_url=None,
    )
    app.state.service = service
    app.state.lifecycle = lifecycle
    app.state.started = time.time()
    app.include_router(api)
    app.include_router(probes)
    app.router.routes.extend(_docs_routes(app))

    async def console(request: Request) -> FileResponse:
        return FileResponse(CONSOLE / "index.html")

    app.router.routes.append(Route("/", console, methods=["GET"]))
    app.router.routes.extend(_file_routes(CONSOLE, sorted(p.name for p in CONSOLE.iterdir() if p.is_file())))
    # Starlette types a handler as taking any Exception; each takes the class it is registered for.
    app.add_exception_handler(RequestValidationError, _validation_error)  # pyright: ignore[reportArgumentType]
    app.add_exception_handler(BodyError, _body_error)  # pyright: ignore[reportArgumentType]
    app.add_exception_handler(StarletteHTTPException, _http_error)  # pyright: ignore[reportArgumentType]
    # Included routers sit in app.routes as one entry each: their own routes give the paths.
    routes = frozenset({str(getattr(r, "path", "")) for r in [*api.routes, *probes.routes, *app.routes]}) - {""}
    app.add_middleware(RequestMiddleware, observers=observers, authenticator=authenticator,
                       max_body_bytes=max_body_bytes, routes=routes)
    return app
