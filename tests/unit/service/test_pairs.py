"""The request path above the engine (service/pairs.py), over a fake engine that counts what it
computes: repeats answered from the cache bit for bit with nothing computed, duplicates in a
request scored once, a pair in flight shared by concurrent requests (single flight), and a
cancelled caller never cancelling work another waits for."""

from __future__ import annotations

import asyncio
import struct
import time

import pytest

from lychee_grpc.engine.api import EngineInfo, EngineLimits, Truncation
from lychee_grpc.engine.types import Document, Query, Score, TextPart
from lychee_grpc.lifecycle import Lifecycle
from lychee_grpc.service import RerankOptions, Service
from lychee_grpc.service.config import ServiceConfig
from lychee_grpc.service.errors import DeadlineExpired, InvalidInput
from lychee_grpc.service.types import RankedResult, RerankOutcome

from .fake_jobs import QueuedJob

LIMITS = EngineLimits(max_documents_per_request=100, max_tokens_per_document=100, max_query_tokens=10,
                      max_instruction_tokens=10, max_image_bytes=1, max_image_pixels=1, min_image_model_pixels=1,
                      max_image_model_pixels=1, max_queue_documents=1000)
INFO = EngineInfo("fake", "float32", "eager", True, 0, "instruction", LIMITS, weights="w")
QUERY = Query((TextPart("retro denim jacket"),))


class GatedJob(QueuedJob):
    """Scores a document (a float from its text, nudged by the job's number so that a
    recomputation would differ) once the engine's gate is open."""

    def __init__(self, engine: GatedEngine, number: int, deadline: float | None):
        self.engine, self.number, self.deadline = engine, number, deadline
        super().__init__()
        self.cancelled = self.closed = False
        self.pending: list[tuple[int, Document]] = []
        self.unreported = 0  # documents whose usage the job has not reported yet
        self.task = asyncio.create_task(self._score())

    async def add_documents(self, documents):
        for _, doc in documents:
            if doc.parts[0].text == "bad":
                raise InvalidInput([])
        self.pending += list(documents)
        self.engine.computed += [doc.parts[0].text for _, doc in documents]
        self.unreported += len(documents)
        if not self.engine.usage_at_end:
            self._report_usage()
        return [7] * len(documents)

    def _report_usage(self):
        self.stats.usage.prompt_tokens += 7 * self.unreported
        self.stats.usage.computed_tokens += 5 * self.unreported
        self.unreported = 0

    async def _score(self):
        while True:
            await self.engine.gate.wait()
            if self.number in self.engine.failing and self.pending:
                self.queue.put_nowait(DeadlineExpired("the job's deadline passed"))
                return
            while self.pending and not self.cancelled:
                index, doc = self.pending.pop(0)
                value = float(doc.parts[0].text) + self.number * 1e-9
                self.queue.put_nowait(Score(index, doc.id, value, value * 10))
            if self.closed and not self.pending:
                if self.unreported:  # reported with the job's end, a moment after its last score
                    await asyncio.sleep(0.05)
                    self._report_usage()
                self.queue.put_nowait(None)
                return
            await asyncio.sleep(0)

    def close(self):
        self.closed = True

    def cancel(self):
        self.cancelled = True
        self.engine.cancelled.append(self.number)
        self.queue.put_nowait(None)


class GatedEngine:
    workers = 1

    def __init__(self):
        self.gate = asyncio.Event()
        self.gate.set()
        self.jobs: list[GatedJob] = []
        self.computed: list[str] = []
        self.cancelled: list[int] = []
        self.failing: set[int] = set()  # jobs (by number) that fail instead of scoring
        self.usage_at_end = False  # jobs report their usage with their end (as the worker pool's do)

    async def open_job(self, query, instruction="", truncation=Truncation.NONE, max_tokens_per_document=0,
                       deadline=None):
        job = GatedJob(self, len(self.jobs), deadline)
        self.jobs.append(job)
        return job

    def info(self):
        return INFO


def make_service(cache_mib: int = 1) -> Service:
    lifecycle = Lifecycle()
    lifecycle.serve()
    return Service(lifecycle, ServiceConfig(score_cache_bytes=cache_mib << 20), GatedEngine())


def docs(*texts: str) -> list[Document]:
    return [Document(f"d{i}", (TextPart(t),)) for i, t in enumerate(texts)]


def bits(results: list[RankedResult]) -> list[tuple[int, bytes]]:
    return sorted((r.index, struct.pack("<dd", r.score, r.logit)) for r in results)


async def test_the_same_request_twice_is_answered_bit_for_bit_with_nothing_computed():
    service = make_service()
    request = docs("0.1", "0.7", "0.4")
    first = await service.rerank(QUERY, request, RerankOptions())
    computed = list(service.engine.computed)
    second = await service.rerank(QUERY, request, RerankOptions())
    assert service.engine.computed == computed and len(service.engine.jobs) == 1  # no job opened
    assert bits(second.results) == bits(first.results)
    assert [r.cached for r in first.results] == [False] * 3 and [r.cached for r in second.results] == [True] * 3
    assert second.usage.cached_documents == 3 and second.usage.computed_tokens == 0
    assert second.usage.prompt_tokens == first.usage.prompt_tokens == 21
    stats = service.score_cache_stats()
    assert (stats.hits, stats.misses, stats.entries) == (3, 3, 3)
    assert service.model_info().score_cache.hits == 3


async def test_usage_a_job_reports_only_with_its_end_is_still_counted():
    service = make_service()
    service.engine.usage_at_end = True
    outcome = await service.rerank(QUERY, docs("0.1", "0.7", "0.4"), RerankOptions())
    assert (outcome.usage.prompt_tokens, outcome.usage.computed_tokens) == (21, 15)
    streamed = [item async for item in service.rerank_stream(QUERY, RerankOptions(), _chunks(docs("0.2", "0.3")))]
    assert (streamed[-1].usage.prompt_tokens, streamed[-1].usage.computed_tokens) == (14, 10)


async def _chunks(documents):
    for doc in documents:
        yield [doc]


async def test_another_instruction_query_or_option_that_changes_a_score_is_computed_again():
    service = make_service()
    request = docs("0.1", "0.7")
    await service.rerank(QUERY, request, RerankOptions())
    for query, options in [(QUERY, RerankOptions(instruction="another")), (Query((TextPart("sofa"),)), RerankOptions()),
                           (QUERY, RerankOptions(truncation="end")),
                           (QUERY, RerankOptions(max_tokens_per_document=50))]:
        outcome = await service.rerank(query, request, options)
        assert not any(r.cached for r in outcome.results)
    assert len(service.engine.computed) == 10
    # The request's default instruction and limit are the server's: the same pairs as before.
    same = await service.rerank(QUERY, request, RerankOptions(instruction="instruction", max_tokens_per_document=100))
    assert all(r.cached for r in same.results)


async def test_identical_documents_in_one_request_are_scored_once():
    service = make_service()
    outcome = await service.rerank(QUERY, docs("0.3", "0.6", "0.3", "0.3"), RerankOptions())
    assert service.engine.computed == ["0.3", "0.6"]
    by_index = {r.index: r for r in outcome.results}
    assert by_index[0].score == by_index[2].score == by_index[3].score
    assert outcome.usage.deduplicated_documents == 2 and outcome.usage.prompt_tokens == 4 * 7
    assert service.score_cache_stats().deduplicated == 2


async def test_with_the_cache_off_repeats_are_computed_but_duplicates_still_once():
    service = make_service(cache_mib=0)
    await service.rerank(QUERY, docs("0.3", "0.3"), RerankOptions())
    again = await service.rerank(QUERY, docs("0.3"), RerankOptions())
    assert service.engine.computed == ["0.3", "0.3"] and not again.results[0].cached
    assert service.model_info().score_cache.capacity_bytes == 0


async def test_concurrent_identical_requests_compute_each_pair_once_and_cancelling_the_first_leaves_others_answered():
    service = make_service()
    engine = service.engine
    engine.gate.clear()  # nothing is scored until every request waits
    request = docs("0.2", "0.9", "0.5")
    first = asyncio.create_task(service.rerank(QUERY, request, RerankOptions()))
    await asyncio.sleep(0.01)
    others = [asyncio.create_task(service.rerank(QUERY, request, RerankOptions())) for _ in range(4)]
    await asyncio.sleep(0.01)
    first.cancel()  # the caller whose job computes every pair
    await asyncio.sleep(0.01)
    engine.gate.set()
    outcomes = await asyncio.gather(*others)
    assert engine.computed == ["0.2", "0.9", "0.5"] and len(engine.jobs) == 1 and engine.cancelled == []
    for outcome in outcomes:
        assert bits(outcome.results) == bits(outcomes[0].results)
        assert outcome.usage.deduplicated_documents == 3 and outcome.usage.computed_tokens == 0
    assert service.score_cache_stats().coalesced == 12
    with pytest.raises(asyncio.CancelledError):
        await first


async def test_work_nobody_waits_for_any_more_is_cancelled():
    service = make_service()
    engine = service.engine
    engine.gate.clear()
    callers = [asyncio.create_task(service.rerank(QUERY, docs("0.2", "0.4"), RerankOptions())) for _ in range(2)]
    await asyncio.sleep(0.01)
    callers[0].cancel()
    await asyncio.sleep(0.01)
    assert engine.cancelled == []  # the second still waits
    callers[1].cancel()
    await asyncio.sleep(0.01)
    assert engine.cancelled == [0]
    await asyncio.gather(*callers, return_exceptions=True)


async def test_when_the_shared_work_fails_a_waiter_computes_the_pair_itself():
    service = make_service()
    engine = service.engine
    engine.gate.clear()
    engine.failing = {0}  # the first request's job
    first = asyncio.create_task(service.rerank(QUERY, docs("0.3"), RerankOptions()))
    await asyncio.sleep(0.01)
    second = asyncio.create_task(service.rerank(QUERY, docs("0.3", "0.8"), RerankOptions()))  # waits on 0.3
    await asyncio.sleep(0.01)
    engine.gate.set()
    with pytest.raises(DeadlineExpired):
        await first
    outcome = await second
    assert sorted(r.index for r in outcome.results) == [0, 1] and not any(r.cached for r in outcome.results)
    assert engine.computed.count("0.3") == 2  # once for each, the second after the first's job failed
    assert len(engine.jobs) == 3  # the first's, the second's (0.8), the second's retry of 0.3


async def test_a_refused_document_fails_its_request_and_waiters_get_their_own_answer():
    service = make_service()
    engine = service.engine
    with pytest.raises(InvalidInput):
        await service.rerank(QUERY, docs("0.2", "bad"), RerankOptions())
    assert engine.cancelled == [0]
    outcome = await service.rerank(QUERY, docs("0.2"), RerankOptions())
    assert not outcome.results[0].cached  # nothing of the refused request was stored


async def test_a_stream_sends_cached_results_before_any_batch_runs():
    service = make_service()
    engine = service.engine
    await service.rerank(QUERY, docs("0.1", "0.2"), RerankOptions())
    engine.gate.clear()  # the engine computes nothing from here on until the gate opens

    async def chunks():
        yield docs("0.1", "0.3")  # one cached, one to compute
        yield docs("0.2")

    events: list[RankedResult | RerankOutcome] = []

    async def consume():
        async for event in service.rerank_stream(QUERY, RerankOptions(), chunks()):
            events.append(event)

    task = asyncio.create_task(consume())
    await asyncio.sleep(0.05)
    assert [(e.index, e.cached) for e in events if isinstance(e, RankedResult)] == [(0, True), (2, True)]
    engine.gate.set()
    await task
    outcome = events[-1]
    assert isinstance(outcome, RerankOutcome)
    assert outcome.usage.cached_documents == 2 and sorted(r.index for r in outcome.results) == [0, 1, 2]


async def test_a_waiter_never_waits_past_its_deadline_for_another_requests_work():
    service = make_service()
    engine = service.engine
    engine.gate.clear()
    first = asyncio.create_task(service.rerank(QUERY, docs("0.2"), RerankOptions()))
    await asyncio.sleep(0.01)
    started = time.monotonic()
    with pytest.raises(DeadlineExpired):
        await service.rerank(QUERY, docs("0.2"), RerankOptions(deadline=started + 0.05))
    assert time.monotonic() - started < 1.0
    engine.gate.set()
    assert len((await first).results) == 1


async def test_a_finished_request_leaves_no_cycle_of_its_pairs_for_the_collector():
    # Its pairs, flights and work are freed by reference counting as it ends: a cycle left per
    # request made the collector run every ~2 requests (bench/RESULTS.md, "third pass").
    import gc

    from lychee_grpc.service.pairs import EngineWork, Flight, PairRequest

    gc.collect()  # what earlier tests left, so that only this test's requests are looked at
    service = make_service()
    one, two = docs("0.1", "0.7", "0.4"), docs("0.7", "0.9")
    await asyncio.gather(service.rerank(QUERY, one, RerankOptions()), service.rerank(QUERY, two, RerankOptions()))
    for job in service.engine.jobs:
        await job.task
    await asyncio.sleep(0)
    gc.set_debug(gc.DEBUG_SAVEALL)  # what only the collector could free is kept in gc.garbage
    try:
        gc.collect()
        left = [o for o in gc.garbage if isinstance(o, (Flight, EngineWork, PairRequest))]
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
    assert left == []
