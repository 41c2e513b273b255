"""Engine statistics come through one seam: the observer hears every event, stats() counts them."""

from __future__ import annotations

import asyncio
import threading

import pytest

from lychee_grpc.engine import DeadlineExpired, Document, EngineStats, ImagePart, NullObserver, StatsObserver
from lychee_grpc.engine.api import score_documents
from lychee_grpc.engine.stats import CANCELLED, DEADLINE, Counters, StatsRecorder

from ...helpers import noise_image, stats_of, text_docs, text_query


class Recording(NullObserver):
    def __init__(self) -> None:
        self.events: list[tuple] = []
        self._lock = threading.Lock()

    def _add(self, *event) -> None:
        with self._lock:
            self.events.append(event)

    def batch_done(self, documents, tokens, images, seconds):
        self._add("batch_done", documents, tokens, images, seconds)

    def documents_dropped(self, count, reason):
        self._add("documents_dropped", count, reason)

    def image_cache(self, hits, misses):
        self._add("image_cache", hits, misses)

    def prefix_saved(self, tokens):
        self._add("prefix_saved", tokens)

    def queue_wait(self, seconds):
        self._add("queue_wait", seconds)

    def of(self, kind: str) -> list[tuple]:
        return [e[1:] for e in self.events if e[0] == kind]


def test_null_observer_satisfies_the_protocol():
    observer: StatsObserver = NullObserver()
    observer.batch_done(1, 2, 0, 0.1)
    assert isinstance(StatsRecorder().counters().documents_scored, int)


def test_recorder_refuses_an_unknown_drop_reason():
    with pytest.raises(ValueError, match="drop reason"):
        StatsRecorder().documents_dropped(1, "bored")


def record_one_of_each(recorder: StatsRecorder) -> None:
    """Every callback that counts, with amounts distinct enough to tell the counters apart."""
    recorder.batch_done(documents=3, tokens=90, images=1, seconds=0.25)
    recorder.documents_dropped(4, CANCELLED)
    recorder.documents_dropped(5, DEADLINE)
    recorder.oom_split()
    recorder.oom_alone(retried=6, refused=7)
    recorder.image_cache(hits=8, misses=9)
    recorder.prefix_saved(10)


# What record_one_of_each leaves on fresh counters: no counter at zero.
ONE_OF_EACH = Counters(documents_scored=3, documents_dropped={CANCELLED: 4, DEADLINE: 5}, batches=1,
                       batch_seconds=0.25, oom_splits=1, oom_retries=6, oom_refusals=7, prefix_tokens_saved=10,
                       image_cache_hits=8, image_cache_misses=9)


def test_each_callback_adds_to_its_counters_and_a_snapshot_keeps_what_it_read():
    recorder = StatsRecorder()
    record_one_of_each(recorder)
    first = recorder.counters()
    record_one_of_each(recorder)
    assert first == ONE_OF_EACH
    assert recorder.counters() == Counters(
        documents_scored=6, documents_dropped={CANCELLED: 8, DEADLINE: 10}, batches=2, batch_seconds=0.5,
        oom_splits=2, oom_retries=12, oom_refusals=14, prefix_tokens_saved=20, image_cache_hits=16,
        image_cache_misses=18)


async def test_engine_stats_carry_every_counter_as_recorded(make_engine):
    engine = await make_engine()
    record_one_of_each(engine.scheduler.recorder)
    stats = stats_of(engine)
    counters = ONE_OF_EACH.by_name()
    assert {name: getattr(stats, name) for name in counters} == counters


async def test_batches_prefix_savings_and_cache_reach_the_observer_and_the_snapshot(make_engine, loaded):
    from lychee_grpc.engine import Engine

    from ...helpers import engine_config

    observer = Recording()
    engine = Engine(engine_config(loaded.model.name_or_path or "tiny", max_wait_ms=20), loaded, observer=observer)
    await engine.start()
    try:
        image = noise_image(56, 56, seed=7)
        docs = [*text_docs("blue jeans", "green tea", "denim jacket"), Document("i", (ImagePart(image),))]
        await score_documents(engine, text_query("denim"), docs)
        await score_documents(engine, text_query("denim"), [Document("i", (ImagePart(image),))])
        stats = stats_of(engine)
    finally:
        await engine.stop()
    assert isinstance(stats, EngineStats)
    assert stats.documents_scored == 5 == sum(e[0] for e in observer.of("batch_done"))
    assert stats.batches == len(observer.of("batch_done")) >= 2
    assert len(observer.of("queue_wait")) == 5
    # Each document after a request's shared prefix saves the prefix tokens.
    assert stats.prefix_tokens_saved == sum(e[0] for e in observer.of("prefix_saved")) > 0
    # The image is computed once, then read from the vision cache.
    assert (stats.image_cache_hits, stats.image_cache_misses) == (1, 1)
    assert stats.image_cache_bytes > 0
    assert stats.queue_documents == stats.queue_tokens == stats.preparing_requests == 0
    assert stats.documents_dropped == {CANCELLED: 0, DEADLINE: 0}
    assert stats.gpu_memory[0].allocated_bytes == 0  # on the CPU


async def test_dropped_documents_are_counted_by_reason(make_engine):
    engine = await make_engine(max_batch_documents=1, max_wait_ms=0)
    gate = threading.Event()
    await engine.scheduler.run_on_gpu(lambda: None)  # the GPU thread is up
    engine.scheduler.submit_to_gpu(gate.wait, 30)  # hold the GPU thread: documents wait in the queue
    cancelled = await engine.open_job(text_query("denim"))
    await cancelled.add_documents(list(enumerate(text_docs("a", "b", "c"))))
    cancelled.cancel()
    expiring = await engine.open_job(text_query("denim"), deadline=asyncio.get_running_loop().time() + 3600)
    expiring.deadline = 0.0  # passed, in time.monotonic() terms
    with pytest.raises(DeadlineExpired):
        await expiring.add_documents(list(enumerate(text_docs("d", "e"))))
    gate.set()
    for _ in range(200):
        if stats_of(engine).queue_documents == 0 and stats_of(engine).documents_dropped[CANCELLED] >= 3:
            break
        await asyncio.sleep(0.01)
    stats = stats_of(engine)
    assert stats.documents_dropped == {CANCELLED: 3, DEADLINE: 2}
    assert stats.documents_scored == 0
