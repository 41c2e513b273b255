"""The REST routes: JSON -> service call -> JSON. Errors are raised, never answered here: the
middleware (http/middleware.py) turns each into the one error body."""

from __future__ import annotations

import asyncio
import math
import re
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Body, Request
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute

from ..lifecycle import Lifecycle, State
from ..observability.requests import note_served
from ..service import Service
from ..service import context as request_context
from ..service.chunking import ChunkedOutcome, rerank_chunked
from ..service.errors import Cancelled, DeadlineExpired, FieldViolation, InvalidInput
from ..service.types import Document, ExplainOptions, ModelInfo, Query, RerankOptions, RerankOutcome
from . import convert
from .schemas import (
    AnyRerankRequest,
    ApiRerankRequest,
    ApiRerankResponse,
    ErrorBody,
    ExplainRequest,
    ExplainResponse,
    ModelList,
    RerankRequest,
    RerankResponse,
    TeiRank,
)

T = TypeVar("T")

TIMEOUT_HEADER = "x-request-timeout"

_ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorBody, "description": meaning}
    for status, meaning in (
        (400, "the body is empty or not JSON"),
        (401, "no valid bearer token"),
        (413, "over a size limit (body, documents per request)"),
        (415, "the body is not sent as application/json"),
        (422, "a field is invalid; field_violations name it"),
        (429, "overloaded; retry after the Retry-After header's seconds"),
        (503, "loading or draining; retry (another replica)"),
        (504, "the x-request-timeout passed"),
    )
}

class BodyError(Exception):
    """A request body refused before any field is read: HTTP's own status, our one error body."""

    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status, self.code = status, code


def _is_json(content_type: str) -> bool:
    mime = content_type.split(";", 1)[0].strip().lower()
    return mime == "application/json" or (mime.startswith("application/") and mime.endswith("+json"))


class JsonRoute(APIRoute):
    """A POST route whose body must be JSON: 415 for another content type (no content type at all
    is read as JSON, as FastAPI does), 400 for an empty body, before any field is looked at."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def checked(request: Request) -> Response:
            if request.method == "POST":
                content_type = request.headers.get("content-type")
                if content_type is not None and not _is_json(content_type):
                    raise BodyError(415, "unsupported_media_type",
                                    f"the body must be JSON sent as content-type: application/json, not {content_type}")
                if not (await request.body()).strip():
                    raise BodyError(400, "invalid_argument", "the body is empty; send a JSON object")
            return await handler(request)

        return checked


api = APIRouter(responses=_ERRORS, route_class=JsonRoute)
probes = APIRouter(tags=["probes"])


def _service(request: Request) -> Service:
    return request.app.state.service


def _timeout(request: Request) -> float | None:
    raw = request.headers.get(TIMEOUT_HEADER)
    if raw is None:
        return None
    try:
        seconds = float(raw)
    except ValueError:
        seconds = math.nan
    if not (seconds > 0 and math.isfinite(seconds)):
        raise InvalidInput([FieldViolation(TIMEOUT_HEADER, f"{raw!r} is not a positive number of seconds")])
    return seconds


async def _until_disconnect(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def _guarded(
    request: Request, work: Awaitable[T], timeout: float | None, rename: Callable[[InvalidInput], InvalidInput]
) -> T:
    """Runs the service call, cancelling it when the client goes away (its documents are dropped,
    as for a cancelled RPC) or when the request's timeout passes. `rename` gives the service's
    field names (parts) the request's JSON names."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_until_disconnect(request))
    try:
        done, _ = await asyncio.wait({task, watcher}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        if task in done:
            try:
                result = task.result()
            except InvalidInput as exc:
                raise rename(exc) from exc
            if isinstance(result, RerankOutcome | ChunkedOutcome):  # what the access log, metrics and trace report
                note_served((result if isinstance(result, RerankOutcome) else result.outcome).served)
            return result
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        if watcher in done:
            raise Cancelled("the client closed the connection")
        raise DeadlineExpired(f"the request took longer than its {TIMEOUT_HEADER} of {timeout} s")
    finally:
        watcher.cancel()
        if not task.done():  # our own caller was cancelled (server shutdown)
            task.cancel()


def _deadline(timeout: float | None) -> float | None:
    return None if timeout is None else time.monotonic() + timeout


def _common(request: Request, timeout: float | None) -> dict[str, Any]:
    return {"deadline": _deadline(timeout), "request_id": request_context.request_id.get()}


def _document_limit(request: Request) -> Callable[[], int]:
    return lambda: _service(request).model_info().limits.max_tokens_per_document


async def _rerank(request: Request, body: RerankRequest, version: str, echo_by_default: bool) -> convert.JsonObject:
    """Every rerank shape but TEI's: one conversion, the service's rerank (chunked with
    max_chunks_per_doc), one response that each client reads its own fields from."""
    timeout = _timeout(request)
    inputs = convert.rerank_inputs(body.query, body.documents, body.rank_fields)
    options = convert.rerank_options(body, _document_limit(request), **_common(request, timeout))
    service = _service(request)
    chunks = None
    if body.max_chunks_per_doc is not None:
        chunked = await _guarded(request, rerank_chunked(service, inputs.query, inputs.documents, options,
                                                         body.max_chunks_per_doc), timeout, inputs.named_fields)
        outcome, chunks = chunked.outcome, chunked.chunks
    else:
        outcome = await _guarded(request, service.rerank(inputs.query, inputs.documents, options), timeout,
                                 inputs.named_fields)
    echo = echo_by_default if body.return_documents is None else body.return_documents
    scored = sum(c.chunks for c in chunks.values()) if chunks else len(body.documents)
    return convert.rerank_response(outcome, body.documents, echo_documents=echo, version=version, chunks=chunks,
                                   raw=convert.raw_scores(body), scored=scored)


_RERANK_DOC = """Results best first, each with its `index`, `relevance_score` ([0, 1]; the logit with vLLM's
`use_activation: false`), `band` and `logit`; Cohere's `meta`, vLLM's `usage`. Documents are strings,
objects with `text` and/or `image` (Jina; a Cohere object keeps its other fields), or vLLM's
`{"content": [...]}`. docs/http.md maps every field to the client it comes from."""


@api.post("/v1/rerank", response_model=RerankResponse, response_model_exclude_none=True, tags=["rerank"],
          summary="Rerank: Cohere v1, Jina and vLLM request shapes", description=_RERANK_DOC)
async def rerank_v1(body: RerankRequest, request: Request) -> Any:
    return await _rerank(request, body, version="1", echo_by_default=False)


@api.post("/v2/rerank", response_model=RerankResponse, response_model_exclude_none=True, tags=["rerank"],
          summary="Rerank: Cohere v2 and vLLM request shapes", description=_RERANK_DOC)
async def rerank_v2(body: RerankRequest, request: Request) -> Any:
    return await _rerank(request, body, version="2", echo_by_default=False)


@api.post("/rerank", response_model=RerankResponse | list[TeiRank], response_model_exclude_none=True,
          tags=["rerank"], summary="Rerank: vLLM's body, or TEI's (told apart by `texts`)")
async def rerank_root(body: Annotated[AnyRerankRequest, Body()], request: Request) -> Any:
    """vLLM's `/rerank` (documents echoed by default, as vLLM does), or text-embeddings-inference's
    (`query`, `texts`, `raw_scores`, `return_text`, `truncate`, `truncation_direction`), answering
    TEI's list of `{index, score, text?}`."""
    if isinstance(body, RerankRequest):
        return await _rerank(request, body, version="1", echo_by_default=True)
    timeout = _timeout(request)
    inputs = convert.rerank_inputs(body.query, body.texts)
    options = convert.tei_options(body, **_common(request, timeout))

    def rename(exc: InvalidInput) -> InvalidInput:
        named = inputs.named_fields(exc)
        return type(named)([FieldViolation(re.sub(r"^documents", "texts", v.field), v.description)
                            for v in named.violations])

    outcome: RerankOutcome = await _guarded(
        request, _service(request).rerank(inputs.query, inputs.documents, options), timeout, rename)
    return convert.tei_response(outcome, body)


@api.get("/v1/models", response_model=ModelList, tags=["info"])
async def models(request: Request) -> Any:
    """OpenAI's model list, which vLLM-style clients read the model id from: the one served model."""
    info = _service(request).model_info()
    started = int(request.app.state.started)
    model: convert.JsonObject = {"id": info.model, "object": "model", "created": started, "owned_by": "lychee-grpc",
                                 "root": info.model, "parent": None, "permission": []}
    return {"object": "list", "data": [model]}


@api.post("/api/rerank", response_model=ApiRerankResponse, tags=["rerank"])
async def api_rerank(body: ApiRerankRequest, request: Request) -> Any:
    """The article's call, `{"query": "...", "documents": ["..."]}`: the documents ranked, with
    their scores."""
    timeout = _timeout(request)
    inputs = convert.rerank_inputs(body.query, body.documents)
    options = RerankOptions(instruction=body.instruction, top_n=body.top_n or 0, min_score=body.min_score,
                            **_common(request, timeout))
    outcome = await _guarded(request, _service(request).rerank(inputs.query, inputs.documents, options), timeout,
                             inputs.named_fields)
    return {
        "results": [
            {"index": r.index, "document": body.documents[r.index], "score": r.score, "band": r.band,
             "cached": r.cached}
            for r in outcome.results
        ],
        "model": outcome.model,
        "request_id": outcome.request_id,
        "dropped_documents": outcome.dropped_documents,
    }


@api.post("/v1/explain", response_model=ExplainResponse, tags=["explain"])
async def explain(body: ExplainRequest, request: Request) -> Any:
    """One pair's score and the fragments that drove it: text fragments and image grid cells,
    each with the score it costs to leave it out."""
    timeout = _timeout(request)
    query_in, document_in = convert.as_content(body.query), convert.as_content(body.document)
    violations: list[FieldViolation] = []
    query = convert.convert_input(query_in, "query", violations)
    document = convert.convert_input(document_in, "document", violations)
    convert.raise_if(violations)
    options = ExplainOptions(instruction=body.instruction, grid_size=body.grid_size,
                             include_query=body.include_query, **_common(request, timeout))
    service = _service(request)
    pair = service.explain(Query(query.parts), Document("0", document.parts), options)
    outcome = await _guarded(request, pair, timeout,
                             lambda exc: convert.named_fields(exc, query.paths, [document.paths]))
    return convert.explain_response(outcome, query_in, document_in)


@api.get("/v1/info", response_model=ModelInfo, tags=["info"])
async def info(request: Request) -> Any:
    """The model, its limits, the default instruction, band thresholds, and whether the weights
    are random (a test checkpoint: its scores mean nothing)."""
    return _service(request).model_info()


def _lifecycle(request: Request) -> Lifecycle:
    return request.app.state.lifecycle


@probes.get("/health")
async def health(request: Request) -> JSONResponse:
    """Readiness: 200 while serving; 503 while loading, draining or failed."""
    state = _lifecycle(request).state
    return JSONResponse({"status": state.value}, status_code=200 if state is State.SERVING else 503)


@probes.get("/live")
async def live(request: Request) -> JSONResponse:
    """Liveness: 200 unless serving has failed for good (then the process is on its way out)."""
    state = _lifecycle(request).state
    return JSONResponse({"status": state.value}, status_code=503 if state is State.FAILED else 200)
