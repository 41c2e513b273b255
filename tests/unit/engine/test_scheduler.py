"""Micro-batching: memory stays flat, cancelled work is dropped, OOM splits a batch."""

from __future__ import annotations

import asyncio
import gc

import pytest

from lychee_grpc.engine.api import score_documents
from lychee_grpc.engine.errors import InvalidInput, Overloaded, TooLarge
from lychee_grpc.engine.job import Job
from lychee_grpc.engine.types import Document, ImagePart

from ...helpers import OutOfMemoryAbove, OutOfMemoryAlone, noise_image, stats_of, text_docs, text_query


async def test_jobs_and_prefixes_are_released_over_thousands_of_requests(make_engine):
    engine = await make_engine(max_wait_ms=0)
    docs = text_docs("blue jeans", "green tea")
    for round_ in range(20):
        await asyncio.gather(*(score_documents(engine, text_query(f"query {round_} {k}"), docs) for k in range(100)))
    await asyncio.sleep(0.2)  # the worker finishes handing back its last batch
    gc.collect()
    alive = [o for o in gc.get_objects() if type(o) is Job and getattr(o.intake, "__self__", None) is engine]
    assert len(alive) == 0, f"{len(alive)} jobs still referenced"
    stats = stats_of(engine)
    assert stats.queue_documents == 0 and stats.queue_tokens == 0
    assert stats.documents_scored == 2000 * 2


async def test_vision_cache_stays_within_its_byte_bound(make_engine):
    engine = await make_engine(vision_cache_bytes=4096)
    for seed in range(12):
        await score_documents(engine, text_query("q"), [Document("i", (ImagePart(noise_image(56, 56, seed=seed)),))])
    stats = stats_of(engine)
    assert 0 < stats.image_cache_bytes <= stats.image_cache_capacity_bytes == 4096


async def test_out_of_memory_splits_the_batch_and_every_document_is_scored(make_engine):
    engine = await make_engine(max_wait_ms=20)
    expected = await score_documents(engine, text_query("denim"), text_docs(*[f"title {i}" for i in range(12)]))
    engine.inject_faults(OutOfMemoryAbove(3))
    got = await score_documents(engine, text_query("denim"), text_docs(*[f"title {i}" for i in range(12)]))
    assert stats_of(engine).oom_splits > 0
    assert [s.score for s in got.scores] == pytest.approx([s.score for s in expected.scores], abs=1e-6)


async def test_a_document_out_of_memory_alone_once_is_scored_again_on_a_drained_gpu(make_engine):
    engine = await make_engine(max_wait_ms=20)
    expected = await score_documents(engine, text_query("denim"), text_docs("title"))
    engine.inject_faults(OutOfMemoryAlone(2))  # the pass with its query's prefix, then the document's own
    got = await score_documents(engine, text_query("denim"), text_docs("title"))
    assert got.scores[0].score == pytest.approx(expected.scores[0].score, abs=1e-6)
    assert (stats_of(engine).oom_retries, stats_of(engine).oom_refusals) == (1, 0)


async def test_a_document_within_a_batch_that_never_fits_is_refused_as_overload_with_a_retry_hint(make_engine):
    engine = await make_engine(max_wait_ms=20)
    engine.inject_faults(OutOfMemoryAbove(0))
    with pytest.raises(Overloaded, match=r"documents\[\d\]: the GPU memory left cannot hold") as info:
        await score_documents(engine, text_query("denim"), text_docs("a", "b"))
    assert info.value.retry_after > 0
    await asyncio.sleep(0.1)
    stats = stats_of(engine)
    assert stats.queue_documents == 0  # the other document's retry left nothing behind
    assert stats.oom_retries == 2 and stats.oom_refusals == 1  # the other one's job had ended: dropped


async def test_a_document_over_a_batch_that_never_fits_is_refused_as_too_large(make_engine):
    engine = await make_engine(max_wait_ms=20, max_batch_tokens=64)
    engine.inject_faults(OutOfMemoryAbove(0))
    long_title = " ".join(["denim jacket with brass buttons"] * 20)
    with pytest.raises(TooLarge) as info:
        await score_documents(engine, text_query("denim"), text_docs(long_title))
    assert [v.field for v in info.value.violations] == ["documents[0]"]
    assert "too large for the GPU memory left" in info.value.violations[0].description


async def test_queue_bound_refuses_with_limit_exceeded(make_engine):
    engine = await make_engine(max_queue_documents=5)
    with pytest.raises(Overloaded, match="queue is full"):
        await score_documents(engine, text_query("denim"), text_docs(*["x"] * 6))


async def test_validation_names_every_bad_document(make_engine):
    engine = await make_engine()
    docs = [*text_docs("ok", "", "fine"), Document("img", (ImagePart(b"junk"),))]
    with pytest.raises(InvalidInput) as info:
        await score_documents(engine, text_query("denim"), docs)
    assert [v.field for v in info.value.violations] == ["documents[1].parts[0].text", "documents[3].parts[0].image"]


class _Recorded:
    """A launched pass's scores that say when they are read (and can fail then, as an
    asynchronous GPU fault is reported)."""

    def __init__(self, scores, tag: int, events: list, fail: Exception | None = None, pending: bool = True):
        self._scores, self._tag, self._events, self._fail = scores, tag, events, fail
        self.pending = pending  # as a GPU pass's scores are until its kernels have run

    def wait(self):
        self.pending = False
        self._events.append(("read", self._tag))
        if self._fail is not None:
            raise self._fail
        return self._scores.wait()


def _record_launches(engine, events: list, fail_pass: int | None = None, pending: bool = True) -> None:
    launch = engine.executor.launch

    def recording(items):
        scores, kept = launch(items)
        tag = sum(1 for kind, _ in events if kind == "launch")
        events.append(("launch", tag))
        fault = RuntimeError("CUDA error: an illegal memory access was encountered") if tag == fail_pass else None
        return _Recorded(scores, tag, events, fault, pending), kept

    engine.executor.launch = recording


async def test_the_next_batch_is_launched_before_the_previous_ones_scores_are_read(make_engine):
    """Batches overlap on the GPU: batch N+1 is laid out and launched while batch N still runs,
    and N's scores are read after; every score equals the request scored in one batch."""
    docs = text_docs(*[f"title {i}" for i in range(6)])
    whole = await score_documents(await make_engine(), text_query("denim"), docs)
    engine = await make_engine(max_wait_ms=0, max_batch_documents=2)
    events: list = []
    _record_launches(engine, events)
    got = await score_documents(engine, text_query("denim"), docs)
    assert events == [("launch", 0), ("launch", 1), ("read", 0), ("launch", 2), ("read", 1), ("read", 2)]
    assert [s.score for s in got.scores] == pytest.approx([s.score for s in whole.scores], abs=1e-5)


async def test_scores_already_made_are_delivered_before_the_next_batch_is_launched(make_engine):
    """On the CPU a launch computes the scores: overlapping would only delay their delivery."""
    engine = await make_engine(max_wait_ms=0, max_batch_documents=2)
    events: list = []
    _record_launches(engine, events, pending=False)
    got = await score_documents(engine, text_query("denim"), text_docs(*[f"title {i}" for i in range(6)]))
    assert len(got.scores) == 6
    assert events == [("launch", 0), ("read", 0), ("launch", 1), ("read", 1), ("launch", 2), ("read", 2)]


async def test_a_fault_reported_when_scores_are_read_fails_its_request_and_later_ones_are_scored(make_engine):
    """An asynchronous GPU fault surfaces when a pass's scores are read: the request whose batch it
    was fails with it, the batch launched beside it and later requests are still scored."""
    engine = await make_engine(max_wait_ms=0, max_batch_documents=2)
    events: list = []
    _record_launches(engine, events, fail_pass=0)
    with pytest.raises(RuntimeError, match="illegal memory access"):
        await score_documents(engine, text_query("denim"), text_docs("a", "b", "c", "d"))
    assert ("launch", 1) in events  # the batch beside it ran
    later = await score_documents(engine, text_query("jeans"), text_docs("e", "f", "g"))
    assert len(later.scores) == 3 and stats_of(engine).queue_documents == 0
