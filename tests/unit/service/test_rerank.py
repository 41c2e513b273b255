"""The service's meaning of rerank and stream, over a fake engine client (no model, no torch)."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from lychee_grpc.engine.api import EngineInfo, EngineLimits, Truncation
from lychee_grpc.engine.types import Document, Query, Score, TextPart
from lychee_grpc.lifecycle import Lifecycle
from lychee_grpc.service import BandThresholds, RerankOptions, Service
from lychee_grpc.service.config import ServiceConfig
from lychee_grpc.service.errors import InvalidInput, NotReady, TooLarge
from lychee_grpc.service.types import RankedResult, RerankOutcome

from .fake_jobs import QueuedJob

LIMITS = EngineLimits(max_documents_per_request=5, max_tokens_per_document=100, max_query_tokens=10,
                      max_instruction_tokens=10, max_image_bytes=1, max_image_pixels=1, min_image_model_pixels=1,
                      max_image_model_pixels=1, max_queue_documents=10)
INFO = EngineInfo("fake", "float32", "eager", True, 0, "instruction", LIMITS)


@dataclass
class Opened:
    truncation: Truncation
    max_tokens_per_document: int


class FakeJob(QueuedJob):
    """Scores each document by the number in its text (so tests choose the order)."""

    def __init__(self, opened: Opened):
        self.opened = opened
        super().__init__()
        self.cancelled = False
        self.indices: list[int] = []

    async def add_documents(self, documents):
        for index, doc in documents:
            value = float(doc.parts[0].text)
            self.queue.put_nowait(Score(index, doc.id, value, value * 10, truncated=value == 0.5))
            self.indices.append(index)
        return [1] * len(documents)

    def close(self):
        self.queue.put_nowait(None)

    def cancel(self):
        self.cancelled = True


class FakeEngine:
    workers = 1

    def __init__(self):
        self.jobs: list[FakeJob] = []

    async def open_job(self, query, instruction="", truncation=Truncation.NONE, max_tokens_per_document=0,
                       deadline=None):
        job = FakeJob(Opened(truncation, max_tokens_per_document))
        self.jobs.append(job)
        return job

    def info(self):
        return INFO


def docs(*scores: float) -> list[Document]:
    return [Document(f"d{i}", (TextPart(str(s)),)) for i, s in enumerate(scores)]


QUERY = Query((TextPart("q"),))


@pytest.fixture
def service() -> Service:
    lifecycle = Lifecycle()
    lifecycle.serve()
    return Service(lifecycle, ServiceConfig(bands=BandThresholds(strong=0.75, medium=0.55)), FakeEngine())


async def test_results_come_best_first_with_bands(service):
    outcome = await service.rerank(QUERY, docs(0.1, 0.9, 0.6), RerankOptions())
    assert [r.index for r in outcome.results] == [1, 2, 0]
    assert [r.band for r in outcome.results] == ["strong", "medium", "weak"]
    assert outcome.model == "fake" and outcome.dropped_documents == 0


async def test_min_score_leaves_out_and_counts_then_top_n_cuts(service):
    outcome = await service.rerank(QUERY, docs(0.1, 0.9, 0.6, 0.7), RerankOptions(min_score=0.5, top_n=2))
    assert [r.index for r in outcome.results] == [1, 3]
    assert outcome.dropped_documents == 1


async def test_truncated_documents_are_counted(service):
    outcome = await service.rerank(QUERY, docs(0.5, 0.9), RerankOptions())
    assert outcome.truncated_documents == 1
    assert [r.truncated for r in outcome.results] == [False, True]


@pytest.mark.parametrize(
    ("options", "field"),
    [
        (RerankOptions(top_n=-1), "top_n"),
        (RerankOptions(min_score=1.5), "min_score"),
        (RerankOptions(truncation="middle"), "truncation"),
        (RerankOptions(max_tokens_per_document=-3), "max_tokens_per_document"),
    ],
)
async def test_bad_options_name_the_field(service, options, field):
    with pytest.raises(InvalidInput) as info:
        await service.rerank(QUERY, docs(0.1), options)
    assert [v.field for v in info.value.violations] == [field]


async def test_no_documents_is_invalid_for_unary_and_stream_alike(service):
    with pytest.raises(InvalidInput, match="at least one document"):
        await service.rerank(QUERY, [], RerankOptions())

    async def nothing():
        if False:
            yield []

    with pytest.raises(InvalidInput, match="at least one document"):
        async for _ in service.rerank_stream(QUERY, RerankOptions(), nothing()):
            pass


async def test_stream_yields_each_result_then_the_outcome(service):
    async def chunks():
        yield docs(0.2, 0.8)
        yield docs(0.6)

    events = [e async for e in service.rerank_stream(QUERY, RerankOptions(top_n=2), chunks())]
    assert all(isinstance(e, RankedResult) for e in events[:3])
    assert [e.index for e in events[:3]] == [0, 1, 2]  # arrival order across chunks
    outcome = events[-1]
    assert isinstance(outcome, RerankOutcome)
    assert [r.index for r in outcome.results] == [1, 2]


async def test_a_bad_chunk_ends_the_stream_with_its_error_and_cancels_the_job(service):
    async def chunks():
        yield docs(0.2)
        raise InvalidInput([])

    with pytest.raises(InvalidInput):
        async for _ in service.rerank_stream(QUERY, RerankOptions(), chunks()):
            pass
    assert service.engine.jobs[-1].cancelled


async def test_requests_are_refused_unless_serving_and_counted_while_in_flight():
    lifecycle = Lifecycle()
    service = Service(lifecycle, ServiceConfig(), FakeEngine())
    with pytest.raises(NotReady, match="loading"):
        await service.rerank(QUERY, docs(0.1), RerankOptions())
    lifecycle.serve()
    seen = []

    class Watching(FakeEngine):
        async def open_job(self, *args, **kwargs):
            seen.append(lifecycle.in_flight)
            return await super().open_job(*args, **kwargs)

    service = Service(lifecycle, ServiceConfig(), Watching())
    await service.rerank(QUERY, docs(0.1), RerankOptions())
    assert seen == [1] and lifecycle.in_flight == 0
    lifecycle.drain()
    with pytest.raises(NotReady, match="shutting down"):
        await service.rerank(QUERY, docs(0.1), RerankOptions())


async def test_the_request_token_limit_is_checked_once_here_and_reaches_the_engine_by_its_name(service):
    with pytest.raises(InvalidInput) as info:
        await service.rerank(QUERY, docs(0.1), RerankOptions(max_tokens_per_document=101))
    assert [v.field for v in info.value.violations] == ["max_tokens_per_document"]
    assert "over the server's limit of 100" in str(info.value)
    await service.rerank(QUERY, docs(0.1), RerankOptions(max_tokens_per_document=100, truncation="end"))
    assert service.engine.jobs[-1].opened == Opened(Truncation.END, 100)


async def test_the_document_count_is_checked_once_for_unary_and_stream(service):
    with pytest.raises(TooLarge, match="6 documents, over the limit of 5"):
        await service.rerank(QUERY, docs(*[0.1] * 6), RerankOptions())

    async def chunks():
        yield docs(0.1, 0.2, 0.3)
        yield docs(0.4, 0.5, 0.6)

    with pytest.raises(TooLarge, match="6 documents, over the limit of 5"):
        async for _ in service.rerank_stream(QUERY, RerankOptions(), chunks()):
            pass
    assert service.engine.jobs[-1].indices == [0, 1, 2]  # the second chunk never reached the engine


async def test_stream_chunks_reach_the_engine_with_their_request_indices(service):
    async def chunks():
        yield docs(0.2, 0.8)
        yield docs(0.6)

    async for _ in service.rerank_stream(QUERY, RerankOptions(), chunks()):
        pass
    assert service.engine.jobs[-1].indices == [0, 1, 2]
