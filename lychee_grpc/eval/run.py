"""Scores every candidate of a dataset through a running deployment: concurrent unary or
streaming calls within the server's advertised limits, back-off on overload, and a score file
that an interrupted run resumes from."""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, TypeVar

import grpc
from google.rpc import error_details_pb2, status_pb2

from lychee_grpc.client import AsyncLycheeClient, image, text
from lychee_grpc.proto import lychee_pb2 as pb

from .dataset import Content, Dataset, EvalQuery

_RETRYABLE = (grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.UNAVAILABLE)

T = TypeVar("T")


@dataclass(frozen=True)
class Side:
    """One deployment and the request settings it is evaluated with."""

    name: str
    target: str
    instruction: str = ""

    def describe(self) -> str:
        return f"{self.target}" + (f" (instruction {self.instruction!r})" if self.instruction else "")


@dataclass
class SideScores:
    side: Side
    model: str
    random_weights: bool
    limits: dict[str, int]
    scores: dict[str, list[float]] = field(default_factory=dict)  # per candidate, incoming order
    failed: dict[str, str] = field(default_factory=dict)  # query id -> the error
    resumed: int = 0
    scored: int = 0


class Progress(Protocol):
    def advance(self, candidates: int) -> None: ...

    def error(self) -> None: ...


class ResumeMismatch(RuntimeError):
    pass


def _parts(content: Content) -> list[pb.Part]:
    # image first, then text: the order of the model's public evaluation script
    parts = [image(content.image_data() or b"")] if content.has_image else []
    return parts + ([text(content.text)] if content.text else [])


def _retry_delay(err: grpc.RpcError) -> float | None:
    """The delay a RESOURCE_EXHAUSTED status asks for through google.rpc.RetryInfo, if any."""
    # grpc's stub types the metadata as one item; it is a sequence of (key, value) pairs.
    for key, value in err.trailing_metadata() or ():  # pyright: ignore[reportGeneralTypeIssues]
        if key != "grpc-status-details-bin":
            continue
        status = status_pb2.Status.FromString(value)
        for detail in status.details:
            info = error_details_pb2.RetryInfo()
            if detail.Unpack(info):  # False for any other detail
                return info.retry_delay.seconds + info.retry_delay.nanos / 1e9
    return None


class ScoreStore:
    """Append-only JSONL of finished queries, headed by what they were scored with; a run that
    finds a matching header skips the queries already there."""

    def __init__(self, path: Path, header: dict[str, object]):  # header: the run's JSON settings
        self.path = path
        self.header = header

    def load(self, fresh: bool) -> dict[str, list[float]]:
        if fresh or not self.path.exists():
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.write_text(json.dumps({"header": self.header}) + "\n")
            return {}
        lines = self.path.read_text().splitlines()
        try:
            header = json.loads(lines[0])["header"] if lines else None
        except (json.JSONDecodeError, KeyError, TypeError):
            header = None
        if header != self.header:
            raise ResumeMismatch(
                f"{self.path} holds scores of another run ({header}); use --fresh to start over or another --out"
            )
        done: dict[str, list[float]] = {}
        broken = False
        for line in lines[1:]:
            try:
                row = json.loads(line)
                done[str(row["query_id"])] = [float(s) for s in row["scores"]]
            except (json.JSONDecodeError, KeyError, TypeError, ValueError):
                broken = True  # a line cut short when the run was killed: that query is scored again
        if broken:
            tmp = self.path.with_suffix(".tmp")
            rows = [{"query_id": qid, "scores": scores} for qid, scores in done.items()]
            tmp.write_text("".join(json.dumps(r) + "\n" for r in [{"header": self.header}, *rows]))
            tmp.replace(self.path)
        return done

    def append(self, query_id: str, scores: list[float]) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps({"query_id": query_id, "scores": scores}) + "\n")
            f.flush()


@dataclass(frozen=True)
class RunSettings:
    concurrency: int = 8
    mode: str = "unary"  # or "stream"
    stream_chunk: int = 16  # documents per stream message
    timeout: float = 120.0
    max_retries: int = 8


async def _with_retry(call: Callable[[], Awaitable[T]], max_retries: int) -> T:
    backoff = 0.25
    for attempt in range(max_retries + 1):
        try:
            return await call()
        except grpc.aio.AioRpcError as err:
            if err.code() not in _RETRYABLE or attempt == max_retries:
                raise
            delay = _retry_delay(err)
            await asyncio.sleep(delay if delay is not None else backoff * (1 + random.random()))
            backoff = min(backoff * 2, 8.0)
    raise AssertionError("unreachable")


async def _score_chunk(
    client: AsyncLycheeClient, side: Side, query: pb.Query, docs: list[pb.Document], settings: RunSettings
) -> list[float]:
    scores = [float("nan")] * len(docs)

    async def unary() -> None:
        response = await client.rerank(query, docs, instruction=side.instruction, timeout=settings.timeout)
        for r in response.results:
            scores[r.index] = r.score

    async def stream() -> None:
        step = settings.stream_chunk
        chunks = [docs[i : i + step] for i in range(0, len(docs), step)]
        async for event in client.rerank_stream(query, chunks, instruction=side.instruction, timeout=settings.timeout):
            if event.WhichOneof("event") == "scored":
                scores[event.scored.index] = event.scored.score

    await _with_retry(stream if settings.mode == "stream" else unary, settings.max_retries)
    if any(s != s for s in scores):
        raise RuntimeError("the server answered without a score for every document")
    return scores


async def score_side(
    dataset: Dataset,
    side: Side,
    store_path: Path,
    settings: RunSettings,
    progress: Progress,
    fresh: bool = False,
) -> SideScores:
    async with AsyncLycheeClient(side.target, timeout=settings.timeout) as client:
        info = await _with_retry(client.model_info, settings.max_retries)
        assert isinstance(info, pb.GetModelInfoResponse)
        limits = info.limits
        result = SideScores(
            side=side,
            model=info.model,
            random_weights=info.random_weights,
            limits={
                "max_documents_per_request": limits.max_documents_per_request,
                "max_concurrent_requests": limits.max_concurrent_requests,
            },
        )
        store = ScoreStore(
            store_path,
            {"dataset_sha256": dataset.sha256, "target": side.target, "instruction": side.instruction,
             "model": info.model},
        )
        done = store.load(fresh)
        todo: list[EvalQuery] = []
        for q in dataset.queries:
            if q.id in done and len(done[q.id]) == len(q.candidates):
                result.scores[q.id] = done[q.id]
                result.resumed += 1
                progress.advance(len(q.candidates))
            else:
                todo.append(q)

        # the server's limits: documents per call (a stream counts as one call), calls at once
        per_call = limits.max_documents_per_request or max(len(q.candidates) for q in dataset.queries)
        at_once = settings.concurrency
        if limits.max_concurrent_requests:
            at_once = min(at_once, limits.max_concurrent_requests)
        gate = asyncio.Semaphore(max(1, at_once))
        # queries whose images are read and held at once: enough to keep every call slot busy
        queries_gate = asyncio.Semaphore(2 * max(1, at_once))

        async def chunk(query: pb.Query, docs: list[pb.Document]) -> list[float]:
            async with gate:
                try:
                    return await _score_chunk(client, side, query, docs, settings)
                finally:
                    progress.advance(len(docs))

        async def one(q: EvalQuery) -> None:
            async with queries_gate:
                await one_held(q)

        async def one_held(q: EvalQuery) -> None:
            try:
                query = pb.Query(parts=_parts(q.content))
                docs = [pb.Document(id=c.id, parts=_parts(c.content)) for c in q.candidates]
            except OSError as exc:
                result.failed[q.id] = f"cannot read an image: {exc}"
                progress.advance(len(q.candidates))
                progress.error()
                return
            pieces = [docs[i : i + per_call] for i in range(0, len(docs), per_call)]
            outcomes = await asyncio.gather(*(chunk(query, p) for p in pieces), return_exceptions=True)
            errors = [o for o in outcomes if isinstance(o, BaseException)]
            for e in errors:
                if isinstance(e, asyncio.CancelledError):
                    raise e
            if errors:
                e = errors[0]
                message = f"{e.code().name}: {e.details()}" if isinstance(e, grpc.aio.AioRpcError) else str(e)
                result.failed[q.id] = message
                progress.error()
                return
            scores = [s for o in outcomes for s in o]  # type: ignore[union-attr]
            result.scores[q.id] = scores
            result.scored += 1
            store.append(q.id, scores)

        await asyncio.gather(*(one(q) for q in todo))
    return result
