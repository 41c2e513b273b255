"""Image embeddings computed ahead of the batch, in chunks as a request's images decode, give the
same scores as the tower run inside the batch, and a failure there only costs the time."""

from __future__ import annotations

import pytest

from lychee_grpc.engine.types import Document, ImagePart, TextPart
from lychee_grpc.engine.vision_cache import VisionCache

from .helpers import noise_image, text_query


def image_docs(n: int) -> list[Document]:
    return [Document(str(i), (ImagePart(noise_image(28 + 4 * (i % 5), 28, fmt="JPEG", seed=i)), TextPart(f"item {i}")))
            for i in range(n)]


def by_index(ranking) -> list[float]:
    return [s.score for s in sorted(ranking.scores, key=lambda s: s.index)]


async def _scores(engine, docs) -> list[float]:
    engine.executor.vision_cache = VisionCache(1 << 30)  # every image is new to the tower
    return by_index(await engine.rerank(text_query("red shoes"), docs))


async def test_prefetched_embeddings_give_the_in_batch_scores(make_engine):
    engine = await make_engine()
    docs = image_docs(40)
    chunks: list[int] = []
    prefetch = engine.preprocessor.prefetch
    engine.preprocessor.prefetch = lambda pending: (chunks.append(len(pending)), prefetch(pending))
    tower_calls: list[int] = []
    tower = engine.executor.tower
    engine.executor.tower = lambda pixels, grids: (tower_calls.append(len(grids)), tower(pixels, grids))[1]
    ahead = await _scores(engine, docs)
    assert len(chunks) >= 2 and sum(chunks) == 40  # in chunks, while the rest decoded
    assert tower_calls == chunks  # the batch found every embedding ready
    engine.preprocessor.prefetch = None
    in_batch = await _scores(engine, docs)
    assert ahead == pytest.approx(in_batch, abs=1e-6)


async def test_a_failed_prefetch_is_recomputed_in_the_batch(make_engine, monkeypatch):
    engine = await make_engine()
    docs = image_docs(20)
    engine.preprocessor.prefetch = None
    expected = await _scores(engine, docs)
    engine.preprocessor.prefetch = engine._prefetch

    def fail(images):
        raise RuntimeError("simulated failure")

    monkeypatch.setattr(engine.executor, "embed_ahead", fail)
    assert await _scores(engine, docs) == pytest.approx(expected, abs=1e-6)
