"""The language model's packed causal attention as one Triton kernel, for the short sequences of
a rerank (a document of ~50-400 tokens after a shared prefix).

Flash attention's varlen kernel gives each (sequence, query head, 128 query rows) to a program:
a T100 document of ~105 tokens fills one program per head, and the seven query heads that share
a key/value head each read the same keys again. Here one program takes (sequence, key/value head,
block of BLOCK_M folded rows), a folded row being one (position, query head of the group):
position-major, so a block's rows see nearly the same keys, which it reads once for all of them
(and straight from the key/value source through the plan's row list, without gathering a copy).

Each query row walks its sequence's keys from the first, BLOCK_N at a time, with the running
maximum and sum of flash attention (float32; the probabilities rounded to the inputs' dtype
before their product with the values, the output normalised at the end). A row's arithmetic
depends only on its own query, its keys and BLOCK_N: the other rows of its block, the sequences
beside it and the batch's size never enter it, and fully masked entries add exact zeros. So the
kernel is batch-invariant as it stands, and a sequence run as a head and a tail that attends to
it (engine/heads.py) gets the bits it gets whole: its tail's keys are the same rows in the same
order from the same first key.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - triton ships with CUDA builds of torch
    triton = None

LOG2E = 1.4426950408889634


@dataclass(frozen=True)
class Tiles:
    """One launch configuration. A fixed one per call site (never chosen by the batch's size),
    which the batch-invariant mode relies on."""

    block_m: int  # folded rows (position, query head) per program
    block_n: int  # keys per step of a row's walk: fixes the order of its sums
    warps: int
    stages: int


# Every layer but the last: sequences of tens to hundreds of rows. The last layer: one query row
# per sequence (its group's heads fill REP rows of a 16-row block). The fastest of 24 tilings on
# T100's and I100's layouts and of 8 for the last layer (H200, `python -m bench.kernels.lm_attention`,
# bench/RESULTS.md).
FULL_TILES = Tiles(64, 32, 4, 2)
LAST_TILES = Tiles(16, 128, 4, 2)

if triton is not None:

    @triton.jit
    def _packed_attention_kernel(
        q_ptr, k_ptr, v_ptr, rows_ptr, cu_q_ptr, cu_k_ptr, out_ptr, scale_log2,
        q_row, q_head, k_row, k_head, v_row, v_head, o_row,
        REP: tl.constexpr, D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    ):
        seq = tl.program_id(0)
        kvh = tl.program_id(1)
        block = tl.program_id(2)
        q_first = tl.load(cu_q_ptr + seq)
        n = tl.load(cu_q_ptr + seq + 1) - q_first
        if block * BLOCK_M < n * REP:
            k_first = tl.load(cu_k_ptr + seq)
            context = tl.load(cu_k_ptr + seq + 1) - k_first - n  # keys before the first query row
            folded = block * BLOCK_M + tl.arange(0, BLOCK_M)
            pos = folded // REP
            head = kvh * REP + folded % REP
            valid = pos < n
            d = tl.arange(0, D)
            q = tl.load(q_ptr + (q_first + pos)[:, None] * q_row + head[:, None] * q_head + d[None, :],
                        mask=valid[:, None], other=0.0)
            # Keys 0 .. context + pos are visible to a row (causal, aligned bottom-right).
            last_pos = tl.minimum(n - 1, (block * BLOCK_M + BLOCK_M - 1) // REP)
            end = context + last_pos + 1
            seen = context + pos
            m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
            l_i = tl.zeros([BLOCK_M], tl.float32)
            acc = tl.zeros([BLOCK_M, D], tl.float32)
            for start in range(0, end, BLOCK_N):
                cols = start + tl.arange(0, BLOCK_N)
                inside = cols < end
                src = tl.load(rows_ptr + k_first + cols, mask=inside, other=0)
                k = tl.load(k_ptr + src[:, None] * k_row + kvh * k_head + d[None, :], mask=inside[:, None], other=0.0)
                s = tl.dot(q, tl.trans(k)) * scale_log2
                s = tl.where(cols[None, :] <= seen[:, None], s, float("-inf"))
                m_new = tl.maximum(m_i, tl.max(s, axis=1))
                p = tl.math.exp2(s - m_new[:, None])
                alpha = tl.math.exp2(m_i - m_new)
                l_i = l_i * alpha + tl.sum(p, axis=1)
                v = tl.load(v_ptr + src[:, None] * v_row + kvh * v_head + d[None, :], mask=inside[:, None], other=0.0)
                acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
                m_i = m_new
            out = acc / l_i[:, None]
            tl.store(out_ptr + (q_first + pos)[:, None] * o_row + head[:, None] * D + d[None, :],
                     out.to(out_ptr.dtype.element_ty), mask=valid[:, None])


def supported(q: torch.Tensor, num_heads: int, num_kv_heads: int, head_dim: int) -> bool:
    """Whether the kernel takes this model's attention here: Triton on CUDA (or its interpreter),
    half precision, a power-of-two head dimension of at least 16, grouped heads."""
    return (
        triton is not None
        and q.dtype in (torch.bfloat16, torch.float16)
        and head_dim >= 16 and head_dim & (head_dim - 1) == 0
        and num_heads % num_kv_heads == 0
    )


def packed_attention(
    q: torch.Tensor, k_src: torch.Tensor, v_src: torch.Tensor, kv_rows: torch.Tensor, cu_q: torch.Tensor,
    cu_k: torch.Tensor, max_q: int, scale: float, tiles: Tiles = FULL_TILES,
) -> torch.Tensor:
    """q [rows, H, D] packed sequence after sequence; k_src/v_src [source rows, Hkv, D] with unit
    stride in D; sequence i's keys are rows kv_rows[cu_k[i]:cu_k[i+1]] of the source, its queries
    rows cu_q[i]:cu_q[i+1] of q, the last of its keys. `max_q` bounds any sequence's query rows
    (it sizes the grid). Returns [rows, H * D]."""
    rows, heads, dim = q.shape
    kv_heads = k_src.shape[1]
    rep = heads // kv_heads
    out = q.new_empty(rows, heads * dim)
    sequences = cu_q.numel() - 1
    if rows == 0 or sequences == 0:
        return out
    blocks = math.ceil(max_q * rep / tiles.block_m)
    _packed_attention_kernel[(sequences, kv_heads, blocks)](
        q, k_src, v_src, kv_rows, cu_q, cu_k, out, scale * LOG2E,
        q.stride(0), q.stride(1), k_src.stride(0), k_src.stride(1), v_src.stride(0), v_src.stride(1), out.stride(0),
        REP=rep, D=dim, BLOCK_M=tiles.block_m, BLOCK_N=tiles.block_n,
        num_warps=tiles.warps, num_stages=tiles.stages,  # pyright: ignore[reportCallIssue]  # launch options
    )
    return out
