"""The REST routes: JSON -> service call -> JSON. Errors are raised, never answered here: the
middleware (http/middleware.py) turns each into the one error body."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from ..lifecycle import Lifecycle, State
from ..observability.requests import note_served
from ..service import Service
from ..service import context as request_context
from ..service.errors import Cancelled, DeadlineExpired, FieldViolation, InvalidInput
from ..service.types import ExplainOptions, ModelInfo, RerankOptions, RerankOutcome
from . import convert
from .schemas import (
    ApiRerankRequest,
    ApiRerankResponse,
    Content,
    ErrorBody,
    ExplainRequest,
    ExplainResponse,
    RerankRequest,
    RerankResponse,
)

T = TypeVar("T")

TIMEOUT_HEADER = "x-request-timeout"

_ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorBody, "description": meaning}
    for status, meaning in (
        (400, "the body is not JSON"),
        (401, "no valid bearer token"),
        (413, "over a size limit (body, documents, tokens)"),
        (422, "a field is invalid; field_violations name it"),
        (429, "overloaded; retry after the Retry-After header's seconds"),
        (503, "loading or draining; retry (another replica)"),
        (504, "the x-request-timeout passed"),
    )
}

# Each route returns Any: a JSON-ready value that FastAPI validates against the route's response_model.
api = APIRouter(responses=_ERRORS)
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
            if isinstance(result, RerankOutcome):  # what the access log, metrics and trace report
                note_served(result.served)
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


@api.post("/v1/rerank", response_model=RerankResponse, response_model_exclude_none=True, tags=["rerank"])
async def rerank(body: RerankRequest, request: Request) -> Any:
    """Cohere/Jina-compatible rerank: results best first, each with its index, relevance_score,
    band and logit; `min_score` leaves out the weak ones and says how many."""
    timeout = _timeout(request)
    violations: list[FieldViolation] = []
    query = convert.query_from(body.query, violations)
    documents = convert.documents_from(body.documents, violations)
    convert.raise_if(violations)
    options = RerankOptions(
        instruction=body.instruction,
        top_n=body.top_n or 0,
        min_score=body.min_score,
        truncation=body.truncation,
        max_tokens_per_document=body.max_tokens_per_document,
        return_documents=body.return_documents,
        deadline=_deadline(timeout),
        request_id=request_context.request_id.get(),
    )
    outcome = await _guarded(request, _service(request).rerank(query, documents, options), timeout,
                             lambda exc: convert.named_fields(exc, body.query, body.documents))
    return convert.rerank_response(outcome, body.documents if body.return_documents else None)


@api.post("/api/rerank", response_model=ApiRerankResponse, tags=["rerank"])
async def api_rerank(body: ApiRerankRequest, request: Request) -> Any:
    """The article's call, `{"query": "...", "documents": ["..."]}`: the documents ranked, with
    their scores."""
    timeout = _timeout(request)
    violations: list[FieldViolation] = []
    query_content = Content(text=body.query, image=None)
    contents = [Content(text=d, image=None) for d in body.documents]
    query = convert.query_from(query_content, violations)
    documents = convert.documents_from(contents, violations)
    options = RerankOptions(
        instruction=body.instruction,
        top_n=body.top_n or 0,
        min_score=body.min_score,
        deadline=_deadline(timeout),
        request_id=request_context.request_id.get(),
    )
    outcome = await _guarded(request, _service(request).rerank(query, documents, options), timeout,
                             lambda exc: convert.named_fields(exc, query_content, contents))
    return {
        "results": [
            {"index": r.index, "document": body.documents[r.index], "score": r.score, "band": r.band}
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
    violations: list[FieldViolation] = []
    query = convert.query_from(body.query, violations)
    document = convert.document_from(body.document, violations)
    convert.raise_if(violations)
    options = ExplainOptions(
        instruction=body.instruction,
        grid_size=body.grid_size,
        include_query=body.include_query,
        deadline=_deadline(timeout),
        request_id=request_context.request_id.get(),
    )
    service = _service(request)
    pair = service.explain(query, document, options)  # type: ignore[attr-defined]
    outcome = await _guarded(request, pair, timeout,
                             lambda exc: convert.named_fields(exc, body.query, document=body.document))
    return convert.explain_response(outcome, body.query, body.document)


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
