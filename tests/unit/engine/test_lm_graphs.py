"""Small batches through the CUDA-graph path (lm/graphs.py) score what the eager path scores: the
padding rows, the padding sequences and the bucketed plans change nothing for the real rows, and a
prefix computed inline is kept with the same keys/values. Graphs that fail their start-up check
are dropped and the batches run eagerly.

CUDA graphs need a GPU; here the capture is replaced by a plain call made at each replay (it reads
the graph's static buffers as a replay would), and flash attention's varlen kernel by per-sequence
attention that reads the same plan (cu_seqlens and the gathered key rows), so the graph path's host
side runs as on the GPU. `python -m bench.ab --a cuda_graphs=true --b cuda_graphs=false` times the
real graphs on a GPU.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lychee_grpc.engine.config import EngineConfig
from lychee_grpc.engine.heads import shared_heads, split
from lychee_grpc.engine.lm import attention as lm_attention
from lychee_grpc.engine.lm.executor import BatchItem, Executor, layout
from lychee_grpc.engine.lm.graphs import GraphOptions, LMGraphs
from lychee_grpc.engine.prompt.prepared import Segment
from lychee_grpc.engine.prompt.template import DEFAULT_INSTRUCTION
from lychee_grpc.engine.types import Document, ImagePart, TextPart

from ...helpers import CallingCapturer, noise_image, pair_cases, text_query

OPTIONS = GraphOptions(tokens=(64, 128, 256, 512, 1024), sequences=(3, 9))


def varlen_by_sequence(q, k, v, cu_q, cu_k, max_q, max_k, scale=None, window_size=(-1, -1)):
    """What flash attention's varlen call computes, one sequence at a time (causal, bottom-right)."""
    assert window_size == (-1, 0)
    out = torch.zeros_like(q)
    rep = q.shape[1] // k.shape[1]
    assert int(cu_q[-1]) <= q.shape[0] and int(cu_k[-1]) <= k.shape[0]
    for i in range(cu_q.numel() - 1):
        q0, q1, k0, k1 = int(cu_q[i]), int(cu_q[i + 1]), int(cu_k[i]), int(cu_k[i + 1])
        n, s = q1 - q0, k1 - k0
        assert 0 <= n <= max_q and 0 <= s <= max_k
        if n == 0:
            continue
        ki = k[k0:k1].repeat_interleave(rep, dim=1).transpose(0, 1)
        vi = v[k0:k1].repeat_interleave(rep, dim=1).transpose(0, 1)
        mask = torch.arange(s)[None, :] <= (s - n + torch.arange(n))[:, None]
        o = F.scaled_dot_product_attention(q[q0:q1].transpose(0, 1), ki, vi, attn_mask=mask, scale=scale)
        out[q0:q1] = o.transpose(0, 1)
    return out


class _NoCache:
    def get(self, key):
        return None

    def put(self, key, value):
        pass

    def __contains__(self, key):
        return False


@pytest.fixture
def make_executor(loaded, monkeypatch):
    monkeypatch.setattr(lm_attention, "varlen_attn", varlen_by_sequence)

    def make(capturer=None, batch_invariant: bool = False) -> Executor:
        ex = Executor(loaded.model, loaded.yes_id, loaded.no_id, vision_cache=_NoCache(), fill_pixels=lambda ims: None,
                      batch_invariant=batch_invariant)
        ex.attention.use_varlen = True
        if capturer is not None:
            ex.graphs = LMGraphs(ex, capturer, OPTIONS)
            ex.graphs.capture_all()
        return ex

    return make


def prepared(engine_preprocessor, query, docs):
    pq = engine_preprocessor.prepare_query(query, DEFAULT_INSTRUCTION)
    return pq, engine_preprocessor.prepare_documents(pq, list(enumerate(docs)))


async def test_graph_batches_score_as_eager_batches_and_keep_the_same_prefix(make_executor, make_engine):
    eager, graphed = make_executor(), make_executor(CallingCapturer())
    assert graphed.graphs is not None and len(graphed.graphs) == len(OPTIONS.tokens) * len(OPTIONS.sequences)
    engine = await make_engine()  # for its preprocessor (tokenizer, images)
    eager.fill_pixels = graphed.fill_pixels = engine.preprocessor.fill_pixels
    for name, (query, docs) in pair_cases().items():
        pq, prepared_docs = prepared(engine.preprocessor, query, docs)
        for chosen in (prepared_docs[:1], prepared_docs):
            items = [BatchItem(pq.prefix, None, score=False, keep_kv=True)]
            items += [BatchItem(d.segment, 0 if d.uses_prefix else None) for d in chosen]
            assert graphed.graphs.find(layout(items, graphed.image_token_id)) is not None, name
            z_eager, kept_eager = eager.run(items)
            z_graph, kept_graph = graphed.run(items)
            torch.testing.assert_close(z_graph, z_eager, rtol=0, atol=1e-5, msg=name)
            for a, b in zip(kept_eager[0].keys + kept_eager[0].values, kept_graph[0].keys + kept_graph[0].values):
                torch.testing.assert_close(b, a, rtol=0, atol=1e-5)
            assert kept_graph[0].length == kept_eager[0].length


async def test_in_the_batch_invariant_mode_graph_batches_have_the_eager_paths_bits(make_executor, make_engine):
    # The mode's kernels give a row the same bits at any row count, so a bucket's padding rows and
    # sequences change none (on the GPU: `python -m bench.invariance`, pairs alone through graphs).
    eager = make_executor(batch_invariant=True)
    graphed = make_executor(CallingCapturer(), batch_invariant=True)
    engine = await make_engine()
    eager.fill_pixels = graphed.fill_pixels = engine.preprocessor.fill_pixels
    for name, (query, docs) in pair_cases().items():
        pq, prepared_docs = prepared(engine.preprocessor, query, docs)
        items = [BatchItem(pq.prefix, None, score=False, keep_kv=True)]
        items += [BatchItem(d.segment, 0 if d.uses_prefix else None) for d in prepared_docs[:2]]
        assert graphed.graphs is not None and graphed.graphs.find(layout(items, graphed.image_token_id)) is not None
        assert torch.equal(graphed.run(items)[0], eager.run(items)[0]), name


def test_in_the_batch_invariant_mode_the_start_up_check_asks_for_the_same_bits(make_executor):
    exact = make_executor(CallingCapturer(), batch_invariant=True)
    assert exact.graphs is not None
    assert set(exact.graphs.validate().values()) == {0.0} and len(exact.graphs) > 0
    # A graph one rounding step off: within the default mode's tolerance, not within this mode's.
    for batch_invariant, kept in ((False, True), (True, False)):
        ex = make_executor(CallingCapturer(shift=1e-6), batch_invariant=batch_invariant)
        assert ex.graphs is not None
        ex.graphs.validate()
        assert (len(ex.graphs) > 0) is kept, batch_invariant


def test_a_batch_takes_the_smallest_bucket_that_holds_its_rows_and_sequences(make_executor):
    graphs = make_executor(CallingCapturer()).graphs
    assert graphs is not None
    assert graphs.bucket(1, 1) == (64, 3)
    assert graphs.bucket(64, 2) == (64, 3)  # a pair: prefix, document, padding
    assert graphs.bucket(65, 2) == (128, 3)
    assert graphs.bucket(100, 3) == (128, 9)
    assert graphs.bucket(1024, 8) == (1024, 9)
    assert graphs.bucket(1025, 2) is None  # over the largest bucket
    assert graphs.bucket(100, 9) is None  # too many sequences with the padding


def test_batches_outside_the_buckets_run_eagerly(make_executor, loaded):
    graphs = make_executor(CallingCapturer()).graphs
    assert graphs is not None
    ids = torch.tensor(loaded.processor.tokenizer.encode("a long document " * 400))
    assert len(ids) > 1024

    def seg(n: int) -> Segment:
        return Segment(ids=ids[:n], positions=torch.arange(n).expand(3, -1).clone(), images=[])

    image_token = loaded.model.config.image_token_id
    assert graphs.find(layout([BatchItem(seg(len(ids)))], image_token)) is None
    assert graphs.find(layout([BatchItem(seg(10))] * 9, image_token)) is None
    assert graphs.find(layout([BatchItem(seg(10), score=False, keep_kv=True)], image_token)) is None  # no score


def test_every_synthetic_check_batch_lands_in_its_own_bucket_with_padding(make_executor):
    graphs = make_executor(CallingCapturer()).graphs
    assert graphs is not None
    for tokens, sequences in graphs.captured:
        items = graphs.synthetic_batch(tokens, sequences)
        rows = sum(len(it.segment) for it in items)
        assert graphs.bucket(rows, len(items)) == (tokens, sequences)
        assert rows < tokens


def test_graphs_that_match_the_eager_path_are_kept(make_executor):
    ex = make_executor(CallingCapturer())
    graphs = ex.graphs
    assert graphs is not None
    diffs = graphs.validate()
    assert len(graphs) == len(diffs) == len(OPTIONS.tokens) * len(OPTIONS.sequences)
    assert max(diffs.values()) <= 1e-5


def test_graphs_that_score_wrong_are_dropped_and_batches_run_eagerly(make_executor):
    ex = make_executor(CallingCapturer(shift=1.0))
    graphs = ex.graphs
    assert graphs is not None and len(graphs)
    graphs.validate()
    assert len(graphs) == 0
    items = graphs.synthetic_batch(64, 3)
    assert graphs.find(layout(items, ex.image_token_id)) is None
    torch.testing.assert_close(ex.run(items)[0], make_executor().run(items)[0], rtol=0, atol=0)


def test_a_capture_that_fails_leaves_no_graph(make_executor):
    ex = make_executor(CallingCapturer(fail=True))
    assert ex.graphs is not None and len(ex.graphs) == 0


async def test_graphs_are_never_made_on_the_cpu(make_engine):
    engine = await make_engine(cuda_graphs=True)
    assert engine.executor.graphs is None


def test_graphs_are_on_by_default_and_lychee_cuda_graphs_0_turns_them_off(monkeypatch):
    monkeypatch.delenv("LYCHEE_CUDA_GRAPHS", raising=False)
    assert EngineConfig(model="m").cuda_graphs is True
    monkeypatch.setenv("LYCHEE_CUDA_GRAPHS", "0")
    assert EngineConfig(model="m").cuda_graphs is False


def test_buckets_stay_below_the_compiled_kernels_threshold():
    # The eager path runs these row counts' elementwise ops eagerly, as the captures do: a bucket
    # at or above the threshold would compare compiled with eager rounding at start-up.
    from lychee_grpc.engine.lm.fused import Kernel
    from lychee_grpc.engine.lm.graphs import TOKEN_BUCKETS

    assert max(TOKEN_BUCKETS) < Kernel.eager_below


async def test_documents_sharing_a_head_score_through_a_graph_as_whole_documents_eagerly(make_executor, make_engine):
    eager, graphed = make_executor(), make_executor(CallingCapturer())
    engine = await make_engine()
    eager.fill_pixels = graphed.fill_pixels = engine.preprocessor.fill_pixels
    photo = ImagePart(noise_image(112, 112, seed=5))
    docs = [Document(f"d{i}", (photo, TextPart(f"blue linen shirt, a relaxed fit {title}")))
            for i, title in enumerate(("with two pockets", "in size M", "on sale"))]
    pq, prepared_docs = prepared(engine.preprocessor, text_query("linen shirt"), docs)
    segments = [d.segment for d in prepared_docs]
    whole = [BatchItem(pq.prefix, None, score=False, keep_kv=True)] + [BatchItem(s, 0) for s in segments]
    (shared,) = shared_heads(segments, eager.image_token_id, min_head=16)
    assert shared.members == (0, 1, 2)
    parts = [split(s, shared.length, eager.image_token_id) for s in segments]
    items = [BatchItem(pq.prefix, None, score=False, keep_kv=True), BatchItem(parts[0][0], 0, score=False)]
    items += [BatchItem(tail, 1) for _, tail in parts]
    assert graphed.graphs is not None and graphed.graphs.find(layout(items, graphed.image_token_id)) is not None
    z_whole = eager.run(whole)[0]
    torch.testing.assert_close(eager.run(items)[0], z_whole, rtol=0, atol=1e-5)
    torch.testing.assert_close(graphed.run(items)[0], z_whole, rtol=0, atol=1e-5)
