"""Two engines in one process share no state: each scores with its own model and settings,
while both run at the same time."""

from __future__ import annotations

import asyncio
import math

import pytest

from lychee_grpc.engine import (
    DEFAULT_INSTRUCTION,
    Engine,
    load_model,
    make_tiny_model,
    reference_logits,
    score_documents,
)

from ...helpers import engine_config, pair_cases, stats_of

TOL = 1e-4


@pytest.fixture(scope="module")
def two_checkpoints(tmp_path_factory) -> list[str]:
    return [str(make_tiny_model(tmp_path_factory.mktemp(f"tiny-seed-{seed}"), seed=seed)) for seed in (1, 2)]


def reference_scores(loaded, query, docs) -> list[float]:
    logits = reference_logits(loaded.model, loaded.processor, DEFAULT_INSTRUCTION, query.parts, [d.parts for d in docs])
    return [1 / (1 + math.exp(-float(z))) for z in logits]


async def test_two_engines_at_once_each_match_their_own_reference(two_checkpoints):
    settings = [dict(max_batch_documents=1, max_wait_ms=0), dict(max_batch_documents=4, max_wait_ms=20,
                                                                 vision_cache_bytes=4096)]
    engines = []
    for path, overrides in zip(two_checkpoints, settings):
        config = engine_config(path, **overrides)
        engine = Engine(config, load_model(config))
        await engine.start()
        engines.append(engine)
    try:
        cases = list(pair_cases().values())
        # Interleaved: every request of one engine runs beside a request of the other.
        calls = [(engine, query, docs) for query, docs in cases for engine in engines]
        rankings = await asyncio.gather(*(score_documents(engine, query, docs) for engine, query, docs in calls))
        by_engine: dict[int, list[float]] = {0: [], 1: []}
        for (engine, query, docs), ranking in zip(calls, rankings):
            got = [s.score for s in sorted(ranking.scores, key=lambda s: s.index)]
            expected = reference_scores(engine.loaded, query, docs)
            assert got == pytest.approx(expected, abs=TOL)
            by_engine[engines.index(engine)].extend(got)
        # The two models differ, so an engine reading the other's weights or state would fail above.
        assert max(abs(a - b) for a, b in zip(by_engine[0], by_engine[1])) > 1e-3
        # Each engine's counters are its own.
        documents = sum(len(docs) for _, docs in cases)
        stats = [stats_of(engine) for engine in engines]
        assert [s.documents_scored for s in stats] == [documents, documents]
        assert stats[0].batches == documents  # one document per batch
        assert stats[1].batches < documents
    finally:
        for engine in engines:
            await engine.stop()
