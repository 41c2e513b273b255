"""Small batches through the CUDA-graph path (lm/graphs.py) score what the eager path scores: the
padding rows, the padding sequences and the bucketed plans change nothing for the real rows, and a
prefix computed inline is kept with the same keys/values.

CUDA graphs need a GPU; here the capture is replaced by a plain call made at each replay, and flash
attention's varlen kernel by per-sequence attention that reads the same plan (cu_seqlens and the
gathered key rows), so the graph path's host side runs as on the GPU. `bench.invariance` and
`bench.pair` run the real graphs on the GPU.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lychee_grpc.engine.lm import attention as lm_attention
from lychee_grpc.engine.lm.executor import BatchItem, Executor
from lychee_grpc.engine.lm.graphs import LMGraphs
from lychee_grpc.engine.prompt.template import DEFAULT_INSTRUCTION
from lychee_grpc.engine.util.graphs import Captured

from ...helpers import pair_cases


def varlen_by_sequence(q, k, v, cu_q, cu_k, max_q, max_k, scale=None, window_size=(-1, -1)):
    """What flash attention's varlen call computes, one sequence at a time (causal, bottom-right)."""
    assert window_size == (-1, 0)
    out = torch.zeros_like(q)
    rep = q.shape[1] // k.shape[1]
    for i in range(cu_q.numel() - 1):
        q0, q1, k0, k1 = int(cu_q[i]), int(cu_q[i + 1]), int(cu_k[i]), int(cu_k[i + 1])
        n, s = q1 - q0, k1 - k0
        if n == 0:
            continue
        assert n <= max_q and s <= max_k
        ki = k[k0:k1].repeat_interleave(rep, dim=1).transpose(0, 1)
        vi = v[k0:k1].repeat_interleave(rep, dim=1).transpose(0, 1)
        mask = torch.arange(s)[None, :] <= (s - n + torch.arange(n))[:, None]
        o = F.scaled_dot_product_attention(q[q0:q1].transpose(0, 1), ki, vi, attn_mask=mask, scale=scale)
        out[q0:q1] = o.transpose(0, 1)
    return out


class CallingPool:
    """A GraphPool whose "graph" calls the function again at every replay."""

    def __init__(self):
        self.count = 0

    def capture(self, fn, inputs, warmup: int = 2):
        self.count += 1
        holder = Captured(graph=None, inputs=inputs, outputs=None)
        holder.replay = lambda: fn(*inputs)
        return holder


@pytest.fixture
def executors(loaded, monkeypatch):
    monkeypatch.setattr(lm_attention, "varlen_attn", varlen_by_sequence)

    def make():
        ex = Executor(loaded.model, loaded.yes_id, loaded.no_id, vision_cache=_NoCache(), fill_pixels=lambda ims: None)
        ex.attention.use_varlen = True
        return ex

    eager, graphed = make(), make()
    graphed.graphs = LMGraphs(graphed, CallingPool(), tokens=(64, 128, 256, 512), sequences=(3, 9))
    graphed.graphs.capture_all()
    return eager, graphed


class _NoCache:
    def get(self, key):
        return None

    def put(self, key, value):
        pass

    def __contains__(self, key):
        return False


def prepared(engine_preprocessor, query, docs):
    pq = engine_preprocessor.prepare_query(query, DEFAULT_INSTRUCTION)
    return pq, engine_preprocessor.prepare_documents(pq, list(enumerate(docs)))


async def test_graph_batches_score_as_eager_batches_and_keep_the_same_prefix(executors, make_engine):
    eager, graphed = executors
    engine = await make_engine()  # for its preprocessor (tokenizer, images)
    eager.fill_pixels = graphed.fill_pixels = engine.preprocessor.fill_pixels
    for name, (query, docs) in pair_cases().items():
        pq, prepared_docs = prepared(engine.preprocessor, query, docs)
        for chosen in (prepared_docs[:1], prepared_docs):
            items = [BatchItem(pq.prefix, None, score=False, keep_kv=True)]
            items += [BatchItem(d.segment, 0 if d.uses_prefix else None) for d in chosen]
            assert graphed.graphs.find(_layout(graphed, items)) is not None, name
            z_eager, kept_eager = eager.run(items)
            z_graph, kept_graph = graphed.run(items)
            torch.testing.assert_close(z_graph, z_eager, rtol=0, atol=1e-5, msg=name)
            for a, b in zip(kept_eager[0].keys + kept_eager[0].values, kept_graph[0].keys + kept_graph[0].values):
                torch.testing.assert_close(b, a, rtol=0, atol=1e-5)
            assert kept_graph[0].length == kept_eager[0].length


def test_batches_outside_the_buckets_run_eagerly(executors, loaded):
    _, graphed = executors
    tok = loaded.processor.tokenizer
    ids = torch.tensor(tok.encode("a long document " * 200))
    from lychee_grpc.engine.prompt.prepare import Segment

    long = Segment(ids=ids, positions=torch.arange(len(ids)).expand(3, -1).clone(), images=[])
    assert graphed.graphs.find(_layout(graphed, [BatchItem(long)])) is None  # over the largest bucket
    short = Segment(ids=ids[:10], positions=torch.arange(10).expand(3, -1).clone(), images=[])
    assert graphed.graphs.find(_layout(graphed, [BatchItem(short)] * 9)) is None  # too many sequences
    assert graphed.graphs.find(_layout(graphed, [BatchItem(short, score=False, keep_kv=True)])) is None


def _layout(ex, items):
    from lychee_grpc.engine.lm.executor import layout

    return layout(items, ex.image_token_id)
