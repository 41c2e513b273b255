"""The batch-invariant mode: a pair's score has the same bits alone, among other documents of its
request, split over several model batches, and mixed with other requests' documents; and it still
equals the plain reference within the parity tolerance.

Here on the CPU (the fallbacks of util/invariant.py: one call shape per row or sequence); the GPU
kernels are checked under Triton's interpreter in test_invariant_kernels.py and on the GPU by
`python -m bench.invariance`.
"""

from __future__ import annotations

import asyncio
import math

import pytest

from lychee_grpc.engine.api import score_documents
from lychee_grpc.engine.model.reference import reference_logits
from lychee_grpc.engine.prompt.template import DEFAULT_INSTRUCTION
from lychee_grpc.engine.types import Document, ImagePart, TextPart

from ...helpers import noise_image, pair_cases

FILLERS = [Document(f"f{i}", (TextPart(text),)) for i, text in enumerate(
    ["slim fit chinos", "stainless steel water bottle insulated", "bluetooth earbuds", "linen shirt summer",
     "gaming keyboard with lights", "three seater sofa grey", "organic green tea"])]


def logits_by_id(result) -> dict[str, float]:
    return {s.id: s.logit for s in result.scores}


async def test_a_pair_has_the_same_bits_alone_in_batches_and_beside_other_requests(make_engine, loaded):
    engine = await make_engine(batch_invariant=True, max_wait_ms=20)
    image_filler = Document("fi", (ImagePart(noise_image(48, 72, seed=9)), TextPart("a picture")))
    for name, (query, docs) in pair_cases().items():
        alone = {}
        for doc in docs:
            alone.update(logits_by_id(await score_documents(engine, query, [doc])))
        # Among other documents, the pair's document in the middle.
        crowd = FILLERS[:3] + list(docs) + FILLERS[3:] + [image_filler]
        together = logits_by_id(await score_documents(engine, query, crowd))
        assert {d.id: together[d.id] for d in docs} == alone, name
        # Split over model batches of two documents: later batches read the stored prefix.
        small = await make_engine(batch_invariant=True, max_batch_documents=2)
        split = logits_by_id(await score_documents(small, query, crowd))
        assert {d.id: split[d.id] for d in docs} == alone, name
        # Beside other requests' documents in the same batches.
        others = [(q, d) for other, (q, d) in pair_cases().items() if other != name]
        results = await asyncio.gather(score_documents(engine, query, crowd),
                                       *(score_documents(engine, q, d + FILLERS) for q, d in others))
        assert {d.id: logits_by_id(results[0])[d.id] for d in docs} == alone, name


async def test_invariant_scores_still_equal_the_reference(make_engine, loaded):
    engine = await make_engine(batch_invariant=True)
    for name, (query, docs) in pair_cases().items():
        result = await score_documents(engine, query, docs)
        expected = reference_logits(loaded.model, loaded.processor, DEFAULT_INSTRUCTION, query.parts,
                                    [d.parts for d in docs])
        got = result.scores
        for score, z in zip(got, expected.tolist()):
            assert score.score == pytest.approx(1 / (1 + math.exp(-z)), abs=1e-4), name


async def test_model_info_says_whether_the_mode_is_on(make_engine):
    assert (await make_engine(batch_invariant=True)).info().batch_invariant is True
    assert (await make_engine()).info().batch_invariant is False


@pytest.mark.parametrize("threads", [1, 16])
def test_activations_give_a_row_the_same_bits_wherever_it_lies_on_the_cpu(threads):
    """torch's CPU loops run a thread's last few elements through scalar code whose exp rounds
    unlike its vector code; with 16 threads, 1 of 1,280 identical rows came out of SiLU otherwise."""
    import torch
    import torch.nn.functional as F

    from lychee_grpc.engine.lm.fused import FusedOps

    ops = FusedOps(torch.device("cpu"), batch_invariant=True)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for rows, width in ((1280, 64), (640, 128), (333, 100)):
            x = (torch.randn(1, width, generator=torch.Generator().manual_seed(width)) * 3).expand(rows, width)
            x = x.contiguous()
            for out in (ops.silu_mul(x, x), ops.activation(torch.nn.GELU(), x), ops.activation(torch.nn.SiLU(), x)):
                assert (out == out[0]).all(), (rows, width)
            assert torch.equal(ops.silu_mul(x, x)[0], F.silu(x[0]) * x[0])
    finally:
        torch.set_num_threads(before)
