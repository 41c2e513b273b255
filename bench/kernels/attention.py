"""Attention kernels on the shapes of a 100-candidate rerank, timed on the GPU (random inputs):
packed varlen flash attention vs scaled_dot_product_attention backends on padded batches.

    python -m bench.kernels.attention
"""

from __future__ import annotations

import sys

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.nn.attention.varlen import varlen_attn

from bench.harness.timing import time_ms


def case(name: str, seqs: int, lq: int, lk: int, heads: int, kv_heads: int, dim: int, causal: bool) -> list:
    dev, bf = "cuda", torch.bfloat16
    q = torch.randn(seqs * lq, heads, dim, device=dev, dtype=bf)
    k = torch.randn(seqs * lk, kv_heads, dim, device=dev, dtype=bf)
    v = torch.randn_like(k)
    cu_q = torch.arange(0, seqs + 1, device=dev, dtype=torch.int32) * lq
    cu_k = torch.arange(0, seqs + 1, device=dev, dtype=torch.int32) * lk
    window = (-1, 0) if causal else (-1, -1)
    rows = [(name, "varlen_attn", time_ms(lambda: varlen_attn(q, k, v, cu_q, cu_k, lq, lk, window_size=window)))]
    qd = q.view(seqs, lq, heads, dim).transpose(1, 2)
    kd = k.view(seqs, lk, kv_heads, dim).transpose(1, 2)
    vd = v.view(seqs, lk, kv_heads, dim).transpose(1, 2)
    mask = None
    if causal:  # bottom-right aligned: query j sees keys up to lk - lq + j
        mask = torch.arange(lk, device=dev)[None, :] <= (lk - lq + torch.arange(lq, device=dev))[:, None]
    for backend in (SDPBackend.FLASH_ATTENTION, SDPBackend.CUDNN_ATTENTION, SDPBackend.EFFICIENT_ATTENTION):
        def run(backend=backend):
            with sdpa_kernel(backend):
                return F.scaled_dot_product_attention(qd, kd, vd, attn_mask=mask, enable_gqa=heads != kv_heads)
        try:
            rows.append((name, backend.name, time_ms(run)))
        except RuntimeError as exc:
            rows.append((name, backend.name + " (refused: " + str(exc).splitlines()[0][:40] + ")", float("nan")))
    return rows


def main() -> int:
    rows = []
    rows += case("T100 LM layer", 100, 96, 173, 28, 4, 128, True)
    rows += case("I100 LM layer", 100, 290, 363, 28, 4, 128, True)
    rows += case("ViT window layer", 1600, 64, 64, 16, 16, 80, False)
    rows += case("ViT full layer", 100, 1024, 1024, 16, 16, 80, False)
    print(f"{'shape':20s} {'kernel':60s} {'ms':>8s}")
    for name, kernel, ms in rows:
        print(f"{name:20s} {kernel:60s} {ms:8.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
