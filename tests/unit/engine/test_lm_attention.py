"""The packed LM attention equals per-sequence causal attention over each sequence's key runs."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lychee_grpc.engine.lm.attention import PackedAttention, host_plan


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
