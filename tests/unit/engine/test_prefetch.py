"""Image embeddings computed ahead of the batch, in chunks as a request's images decode, give the
same scores as the tower run inside the batch; a failure there only costs the time; a budget
bounds what waits on the GPU; a cancelled request's chunks are skipped; an image evicted from the
vision cache after preparation is decoded again in its batch; preparation waits, within a bound,
while a chunk handed over is embedded."""

from __future__ import annotations

import time

import pytest

from lychee_grpc.engine.api import score_documents
from lychee_grpc.engine.prompt.prepared import prefetch_chunk
from lychee_grpc.engine.types import Document, ImagePart, TextPart

from ...helpers import noise_image, text_query


def image_docs(n: int) -> list[Document]:
    return [Document(str(i), (ImagePart(noise_image(28 + 4 * (i % 5), 28, fmt="JPEG", seed=i)), TextPart(f"item {i}")))
            for i in range(n)]


def by_index(ranking) -> list[float]:
    return [s.score for s in sorted(ranking.scores, key=lambda s: s.index)]


async def _scores(engine, docs) -> list[float]:
    engine.executor.vision_cache.clear()  # every image is new to the tower
    return by_index(await score_documents(engine, text_query("red shoes"), docs))


def _spy(engine) -> tuple[list[int], list[int]]:
    """Records the chunk sizes computed ahead of their batch and the images per tower call."""
    chunks: list[int] = []
    tower_calls: list[int] = []
    embed_ahead = engine.embed_ahead
    engine.embed_ahead = lambda pending, job: (chunks.append(len(pending)), embed_ahead(pending, job))[1]
    engine.executor.tower = _CountingTower(engine.executor.tower, tower_calls)
    return chunks, tower_calls


class _CountingTower:
    """The tower, recording how many images each call computes."""

    def __init__(self, tower, calls: list[int]):
        self._tower, self._calls = tower, calls

    def __call__(self, pixels, grids, shares=None):
        self._calls.append(len(grids))
        return self._tower(pixels, grids, shares)

    def __getattr__(self, name: str):
        return getattr(self._tower, name)


async def _in_batch_scores(engine, docs) -> list[float]:
    budget = engine.config.prefetch_image_tokens
    engine.config.prefetch_image_tokens = 0  # prefetching off: the tower runs inside the batch
    try:
        return await _scores(engine, docs)
    finally:
        engine.config.prefetch_image_tokens = budget


async def test_prefetched_embeddings_give_the_in_batch_scores(make_engine):
    engine = await make_engine()
    docs = image_docs(40)
    expected = await _in_batch_scores(engine, docs)
    chunks, tower_calls = _spy(engine)
    ahead = await _scores(engine, docs)
    assert len(chunks) >= 2 and sum(chunks) == 40  # in chunks, while the rest decoded
    assert tower_calls == chunks  # the batch found every embedding ready
    assert ahead == pytest.approx(expected, abs=1e-6)


async def test_prefetch_stops_at_the_budget_and_the_rest_runs_in_the_batch(make_engine):
    docs = image_docs(40)
    probe = await make_engine()
    tokens = [probe.preprocessor.encode_image(d.parts[0].data)[0].tokens for d in docs]
    size = prefetch_chunk(40)
    engine = await make_engine(prefetch_image_tokens=sum(tokens[:size]) + 1)  # one chunk fits
    expected = await _in_batch_scores(engine, docs)
    chunks, tower_calls = _spy(engine)
    assert await _scores(engine, docs) == pytest.approx(expected, abs=1e-6)
    assert chunks == [size]
    assert sum(tower_calls) == 40 and tower_calls[0] == size


def test_chunks_are_equal_with_no_small_remainder():
    assert [prefetch_chunk(n) for n in (1, 10, 16, 20, 40, 50, 100, 200)] == [1, 10, 16, 20, 20, 17, 25, 50]
    for n in range(1, 300):
        size = prefetch_chunk(n)
        sizes = [size] * (n // size) + ([n % size] if n % size else [])
        assert min(sizes) >= min(n, size) - 3 or len(sizes) == 1, (n, sizes)


async def test_a_failed_prefetch_is_recomputed_in_the_batch(make_engine, monkeypatch):
    engine = await make_engine()
    docs = image_docs(20)
    expected = await _in_batch_scores(engine, docs)

    def fail(images):
        raise RuntimeError("simulated failure")

    monkeypatch.setattr(engine.executor, "embed_ahead", fail)
    assert await _scores(engine, docs) == pytest.approx(expected, abs=1e-6)


async def test_a_cancelled_requests_chunks_are_skipped(make_engine, monkeypatch):
    engine = await make_engine()
    ran: list[int] = []
    monkeypatch.setattr(engine.executor, "embed_ahead", lambda images: ran.append(len(images)))

    class Gone:
        def alive(self) -> bool:
            return False

    engine.embed_ahead([object()], Gone())
    assert ran == []


async def test_pixels_beyond_the_budget_are_computed_per_batch(make_engine):
    """Without prefetching, a request's pixels are made batch by batch from the decoded pictures,
    so at most a batch's worth waits on the device."""
    engine = await make_engine(prefetch_image_tokens=0, max_batch_images=8)
    calls: list[int] = []
    fill = engine.executor.fill_pixels
    engine.executor.fill_pixels = lambda pending: (calls.append(len(pending)), fill(pending))[1]
    docs = image_docs(30)
    scores = await _scores(engine, docs)
    assert sum(calls) == 30 and max(calls) <= 8
    reference = await make_engine(prefetch_image_tokens=0)
    assert scores == pytest.approx(await _scores(reference, docs), abs=1e-5)


async def test_a_repeated_image_is_embedded_once_and_its_pixels_freed(make_engine):
    engine = await make_engine()
    docs = image_docs(20)
    docs += [Document("again", docs[3].parts)]  # the same bytes in a second document
    expected = await _in_batch_scores(engine, docs)
    _, tower_calls = _spy(engine)
    seen: list = []
    embed_ahead = engine.executor.embed_ahead
    engine.executor.embed_ahead = lambda images: (seen.extend(images), embed_ahead(images))[1]
    assert await _scores(engine, docs) == pytest.approx(expected, abs=1e-6)
    assert sum(tower_calls) == 20  # 21 images, 20 distinct
    assert all(im.embedding is not None and im.pixel_values is None and im.picture is None for im in seen)


async def test_image_evicted_between_preparation_and_batch_is_decoded_again(make_engine):
    """An image whose vision output was cached when its request was prepared (so it was not
    decoded) but evicted before its batch ran is decoded again there, with the same scores."""
    engine = await make_engine(prefetch_image_tokens=0)
    docs = image_docs(6)
    expected = await _scores(engine, docs)  # leaves every image in a fresh cache
    prepare = engine.preprocessor.prepare_documents
    evicted = []

    def prepare_then_evict(*args):
        prepared = prepare(*args)
        evicted.extend(im for doc in prepared for im in doc.segment.images if im.picture is None)
        engine.executor.vision_cache.clear()
        return prepared

    engine.preprocessor.prepare_documents = prepare_then_evict
    got = by_index(await score_documents(engine, text_query("red shoes"), docs))
    assert len(evicted) == 6
    assert got == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize(("wait_ms", "prepared_first"), [(5000.0, False), (50.0, True), (0.0, True)])
async def test_preparation_waits_while_a_handed_chunk_is_embedded_up_to_its_bound(make_engine, wait_ms,
                                                                                   prepared_first):
    """With a bound longer than the chunk takes, the documents are prepared after its embeddings
    are launched (the two threads' Python does not compete); with a short one, or none, a slow
    GPU thread does not hold preparation up."""
    engine = await make_engine(prefetch_handoff_wait_ms=wait_ms)
    events: list[tuple[float, str]] = []
    embed_ahead = engine.embed_ahead

    def slow_embed(pending, job) -> None:
        time.sleep(0.5)
        embed_ahead(pending, job)
        events.append((time.perf_counter(), "embedded"))

    prepare = engine.preprocessor.prepare_documents

    def timed_prepare(*args, **kwargs):
        out = prepare(*args, **kwargs)
        events.append((time.perf_counter(), "prepared"))
        return out

    engine.embed_ahead = slow_embed
    engine.preprocessor.prepare_documents = timed_prepare
    await _scores(engine, image_docs(4))
    order = [name for _, name in sorted(events)]
    assert order == (["prepared", "embedded"] if prepared_first else ["embedded", "prepared"])
