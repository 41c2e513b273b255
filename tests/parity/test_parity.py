"""Served scores equal the plain single-pair reference (AutoProcessor + model forward + yes/no
logits) within 1e-4 in float32, whatever the batch composition and concurrency."""

from __future__ import annotations

import asyncio
import math

import pytest
import torch

from lychee_grpc.engine.api import score_documents
from lychee_grpc.engine.lm.executor import BatchItem
from lychee_grpc.engine.model.reference import reference_logits
from lychee_grpc.engine.prompt.template import DEFAULT_INSTRUCTION, ECOMMERCE_INSTRUCTION

from ..helpers import pair_cases, text_docs, text_query

TOL = 1e-4


def reference_scores(loaded, query, docs, instruction=DEFAULT_INSTRUCTION) -> list[float]:
    logits = reference_logits(loaded.model, loaded.processor, instruction, query.parts, [d.parts for d in docs])
    return [1 / (1 + math.exp(-float(z))) for z in logits]


def by_index(ranking) -> list[float]:
    return [s.score for s in sorted(ranking.scores, key=lambda s: s.index)]


@pytest.mark.parametrize("case", list(pair_cases()))
async def test_scores_match_reference(make_engine, loaded, case):
    engine = await make_engine()
    query, docs = pair_cases()[case]
    ranking = await score_documents(engine, query, docs)
    expected = reference_scores(loaded, query, docs)
    assert by_index(ranking) == pytest.approx(expected, abs=TOL)
    # Not a degenerate model: documents get different scores.
    assert max(expected) - min(expected) > 1e-3


async def test_scores_match_reference_with_custom_instruction(make_engine, loaded):
    engine = await make_engine()
    query, docs = pair_cases()["text-text"]
    ranking = await score_documents(engine, query, docs, instruction=ECOMMERCE_INSTRUCTION)
    assert by_index(ranking) == pytest.approx(reference_scores(loaded, query, docs, ECOMMERCE_INSTRUCTION), abs=TOL)


@pytest.mark.parametrize("batch", [dict(max_batch_documents=1), dict(max_batch_tokens=64), dict(max_batch_documents=3)])
async def test_scores_independent_of_batch_composition_and_concurrency(make_engine, loaded, batch):
    engine = await make_engine(max_wait_ms=20, **batch)
    cases = list(pair_cases().values())
    results = await asyncio.gather(*(score_documents(engine, q, d) for q, d in cases * 2))
    for (query, docs), ranking in zip(cases * 2, results):
        assert by_index(ranking) == pytest.approx(reference_scores(loaded, query, docs), abs=TOL)


async def test_document_without_shared_prefix_is_scored_on_its_full_prompt(make_engine, loaded):
    """When a document's tokens differ from the request prefix at the boundary, it is run whole."""
    engine = await make_engine()
    query, docs = text_query("what fits?"), text_docs("!!! slim fit", ":) loose", "regular")
    prepared_query = engine.preprocessor.prepare_query(query, DEFAULT_INSTRUCTION)
    prepared_query.prefix_ids = [*prepared_query.prefix_ids[:-1], -1]  # force a mismatch
    prepared = engine.preprocessor.prepare_documents(prepared_query, list(enumerate(docs)))
    assert not any(p.uses_prefix for p in prepared)
    logits, _ = engine.executor.run([BatchItem(p.segment) for p in prepared])
    expected = reference_logits(loaded.model, loaded.processor, DEFAULT_INSTRUCTION, query.parts,
                                [d.parts for d in docs])
    assert torch.allclose(logits, expected, atol=1e-4)


async def test_reference_batched_with_left_padding_agrees_with_single_pairs(loaded):
    query, docs = pair_cases()["mixed-mixed"]
    single = reference_logits(loaded.model, loaded.processor, DEFAULT_INSTRUCTION, query.parts,
                              [d.parts for d in docs], batch_size=1)
    batched = reference_logits(loaded.model, loaded.processor, DEFAULT_INSTRUCTION, query.parts,
                               [d.parts for d in docs], batch_size=3)
    assert torch.allclose(single, batched, atol=1e-4)
