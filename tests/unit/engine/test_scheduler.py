"""Micro-batching: memory stays flat, cancelled work is dropped, OOM splits a batch."""

from __future__ import annotations

import asyncio
import gc

import pytest

from lychee_grpc.engine.api import score_documents
from lychee_grpc.engine.errors import InvalidInput, Overloaded, TooLarge
from lychee_grpc.engine.job import Job
from lychee_grpc.engine.types import Document, ImagePart

from ...helpers import OutOfMemoryAbove, noise_image, stats_of, text_docs, text_query


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


async def test_a_document_too_large_for_memory_fails_alone(make_engine):
    engine = await make_engine(max_wait_ms=20)
    engine.inject_faults(OutOfMemoryAbove(0))
    with pytest.raises(TooLarge, match="GPU memory left"):
        await score_documents(engine, text_query("denim"), text_docs("a", "b"))


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
