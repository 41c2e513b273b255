"""The packed LM attention equals per-sequence causal attention over each sequence's key runs."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lychee_grpc.engine.lm.attention import KERNEL_LONGEST, PackedAttention, host_plan


def reference(q, k_src, v_src, queries, keys, rep):
    out = []
    for (q0, n), runs in zip(queries, keys):
        rows = torch.cat([torch.arange(r0, r0 + c) for r0, c in runs])
        k = k_src[rows].repeat_interleave(rep, dim=1).transpose(0, 1)  # [H, S, D]
        v = v_src[rows].repeat_interleave(rep, dim=1).transpose(0, 1)
        S = rows.numel()
        mask = torch.arange(S)[None, :] <= (S - n + torch.arange(n))[:, None]  # causal, bottom-right aligned
        o = F.scaled_dot_product_attention(q[q0:q0 + n].transpose(0, 1), k, v, attn_mask=mask)
        out.append(o.transpose(0, 1).reshape(n, -1))
    return torch.cat(out)


def test_padded_attention_matches_per_sequence_causal_attention_with_a_stored_prefix():
    g = torch.Generator().manual_seed(0)
    heads, kv_heads, dim = 4, 2, 8
    attention = PackedAttention(heads, kv_heads, dim, torch.device("cpu"), torch.float32)
    assert not attention.use_varlen  # the padded SDPA path on the CPU
    # K/V source: a stored 3-row prefix, then the packed rows of two sequences (4 and 2 tokens), then padding.
    prefix, lengths = 3, [4, 2]
    n = sum(lengths)
    q = torch.randn(n, heads, dim, generator=g)
    k_src = torch.cat([torch.randn(prefix + n, kv_heads, dim, generator=g), torch.zeros(1, kv_heads, dim)])
    v_src = torch.cat([torch.randn(prefix + n, kv_heads, dim, generator=g), torch.zeros(1, kv_heads, dim)])
    queries = [(0, 4), (4, 2)]
    keys = [[(prefix, 4)], [(0, prefix), (prefix + 4, 2)]]  # the second sequence attends to the prefix first
    host = host_plan(queries, keys, n, prefix + n)
    plan = attention.plan(host, host.flat, host.cu_q, host.cu_k)
    got = attention(q, k_src, v_src, plan)
    torch.testing.assert_close(got, reference(q, k_src, v_src, queries, keys, heads // kv_heads))
    # Only the last token of each sequence, against the same keys.
    last_q = [(0, 1), (1, 1)]
    last = host_plan(last_q, keys, 2, prefix + n)
    q_last = q[[3, 5]]
    got_last = attention(q_last, k_src, v_src, attention.plan(last, last.flat, last.cu_q, last.cu_k))
    torch.testing.assert_close(got_last, reference(q, k_src, v_src, queries, keys, heads // kv_heads)[[3, 5]])


def test_padded_attention_groups_sequences_of_any_lengths_in_any_order():
    """Sequences of interleaved lengths (so each padded group's members lie apart) with and
    without a stored prefix, enough of them to be attended in several groups: every row equals
    per-sequence causal attention."""
    g = torch.Generator().manual_seed(1)
    heads, kv_heads, dim = 4, 2, 8
    attention = PackedAttention(heads, kv_heads, dim, torch.device("cpu"), torch.float32)
    prefix, lengths = 5, [1, 40, 3, 70, 2, 9, 33, 1, 17] * 6
    n = sum(lengths)
    starts = [sum(lengths[:i]) for i in range(len(lengths))]
    q = torch.randn(n, heads, dim, generator=g)
    k_src = torch.cat([torch.randn(prefix + n, kv_heads, dim, generator=g), torch.zeros(1, kv_heads, dim)])
    v_src = torch.cat([torch.randn(prefix + n, kv_heads, dim, generator=g), torch.zeros(1, kv_heads, dim)])
    queries = list(zip(starts, lengths))
    keys = [([(0, prefix)] if i % 2 else []) + [(prefix + s, c)] for i, (s, c) in enumerate(queries)]
    host = host_plan(queries, keys, n, prefix + n)
    plan = attention.plan(host, host.flat, host.cu_q, host.cu_k)
    assert plan.groups is not None and len(plan.groups) > 2
    torch.testing.assert_close(attention(q, k_src, v_src, plan), reference(q, k_src, v_src, queries, keys, 2))


def test_the_triton_kernel_is_not_used_off_cuda():
    attention = PackedAttention(4, 2, 8, torch.device("cpu"), torch.float32, kernel=True)
    assert not attention.use_kernel and attention.splits_exactly


@pytest.mark.gpu
def test_the_triton_kernel_equals_flash_attention_on_a_rerank_layout():
    """The 7B's heads in bfloat16: a prefix, 30 documents after it (one after a head it shares),
    every layer's plan and the last layer's; then a document's bits alone and beside the others."""
    dev = torch.device("cuda")
    g = torch.Generator().manual_seed(0)
    heads, kv_heads, dim, prefix = 28, 4, 128, 74
    lengths = [int(n) for n in torch.randint(1, 300, (30,), generator=g)]
    queries, keys, r = [(0, prefix)], [[(0, prefix)]], prefix
    for n in lengths:
        queries.append((r, n))
        keys.append([(0, prefix), (r, n)])
        r += n
    keys[2] = [(0, prefix), (prefix, lengths[0]), (prefix + lengths[0], lengths[1])]  # a tail after a head
    q = torch.randn(r, heads, dim, generator=g).to(dev, torch.bfloat16)
    k_src = torch.randn(r + 1, kv_heads, dim, generator=g).to(dev, torch.bfloat16)
    v_src = torch.randn(r + 1, kv_heads, dim, generator=g).to(dev, torch.bfloat16)
    kernel = PackedAttention(heads, kv_heads, dim, dev, torch.bfloat16, kernel=True)
    flash = PackedAttention(heads, kv_heads, dim, dev, torch.bfloat16)
    assert kernel.use_kernel and kernel.splits_exactly

    def run(attention, queries, keys, q, last=False):
        host = host_plan(queries, keys, q.shape[0], r)
        plan = attention.plan(host, host.flat.to(dev), host.cu_q.to(dev), host.cu_k.to(dev), last=last)
        return attention(q, k_src, v_src, plan).float()

    torch.testing.assert_close(run(kernel, queries, keys, q), run(flash, queries, keys, q), atol=2e-2, rtol=2e-2)
    ends = [q0 + n - 1 for q0, n in queries]
    last_q = [(i, 1) for i in range(len(queries))]
    torch.testing.assert_close(run(kernel, last_q, keys, q[ends], last=True),
                               run(flash, last_q, keys, q[ends], last=True), atol=2e-2, rtol=2e-2)
    # Document 5 alone (its prefix as context) against beside the others, every layer's plan.
    q0, n = queries[5]
    alone = run(kernel, [(0, n)], [keys[5]], q[q0 : q0 + n])
    assert torch.equal(alone, run(kernel, queries, keys, q)[q0 : q0 + n])
    # A batch with a sequence past KERNEL_LONGEST attends with flash (outside the batch-invariant mode).
    long_q, long_keys = [(0, r)], [[(0, r)]]
    assert r > KERNEL_LONGEST
    assert torch.equal(run(kernel, long_q, long_keys, q), run(flash, long_q, long_keys, q))
