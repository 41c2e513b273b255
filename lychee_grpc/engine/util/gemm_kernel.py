"""A matrix product whose every output row depends on that row of the input alone: the
batch-invariant mode's `x @ W^T + b` (nn.Linear's layout), as one persistent Triton kernel.

cuBLAS picks its kernel from the problem's shape: tile sizes, split-K and stream-K all change with
the number of rows M, so a document's hidden state came out with different low bits when it ran
alone (M ~ 150) and inside a 100-document batch (M ~ 11,000). Here the schedule is fixed:

- one tile shape (`CONFIG`) for every M, so every output element is the same sequence of
  BLOCK_K-wide tensor-core products, accumulated in float32 in the same order over K;
- no split-K and no stream-K: one program owns a tile from the first K block to the last;
- M is never a specialisation key (`do_not_specialize`): a batch of 1 and of 10,000 rows run the
  same compiled kernel; rows past M are read as row 0 and never written;
- the bias is added to the float32 accumulator, then rounded once to the output dtype.

Persistent: a grid of one program per multiprocessor walks the tiles, grouped along M so that
neighbouring programs share the weight tiles in L2.
"""

from __future__ import annotations

import functools

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - triton ships with CUDA builds of torch
    triton = None

# Fixed for every shape (the point of the kernel). 128x256x64, 3 stages, 8 warps: the Triton
# tutorial's persistent-matmul setting for Hopper; bench/kernels/invariant.py times it here.
CONFIG = {"BLOCK_M": 128, "BLOCK_N": 256, "BLOCK_K": 64, "GROUP_M": 8, "num_stages": 3, "num_warps": 8}

if triton is not None:

    @triton.jit(do_not_specialize=["M", "num_programs"])
    def _linear_kernel(
        a_ptr, w_ptr, bias_ptr, c_ptr, M, N, K, num_programs,
        stride_am, stride_ak, stride_wn, stride_wk, stride_cm, stride_cn,
        HAS_BIAS: tl.constexpr, IEEE: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
    ):
        pid = tl.program_id(0)
        tiles_m = tl.cdiv(M, BLOCK_M)
        tiles_n = tl.cdiv(N, BLOCK_N)
        k_tiles = tl.cdiv(K, BLOCK_K)
        per_group = GROUP_M * tiles_n
        offs_k = tl.arange(0, BLOCK_K)
        for tile in tl.range(pid, tiles_m * tiles_n, num_programs):
            group = tile // per_group
            first_m = group * GROUP_M
            group_size = min(tiles_m - first_m, GROUP_M)
            tile_m = first_m + (tile % per_group) % group_size
            tile_n = (tile % per_group) // group_size
            rows = tile_m * BLOCK_M + tl.arange(0, BLOCK_M)
            cols = tile_n * BLOCK_N + tl.arange(0, BLOCK_N)
            # Out-of-range rows and columns read row/column 0: valid memory, never stored.
            a_rows = tl.where(rows < M, rows, 0).to(tl.int64)
            w_rows = tl.where(cols < N, cols, 0).to(tl.int64)
            acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
            for kt in range(k_tiles):
                ks = kt * BLOCK_K + offs_k
                k_ok = ks < K
                a = tl.load(a_ptr + a_rows[:, None] * stride_am + ks[None, :] * stride_ak, mask=k_ok[None, :],
                            other=0.0)
                w = tl.load(w_ptr + w_rows[:, None] * stride_wn + ks[None, :] * stride_wk, mask=k_ok[None, :],
                            other=0.0)
                if IEEE:  # float32 inputs: true float32 products, not TF32
                    acc = tl.dot(a, tl.trans(w), acc, input_precision="ieee")
                else:
                    acc = tl.dot(a, tl.trans(w), acc)
            if HAS_BIAS:
                bias = tl.load(bias_ptr + cols, mask=cols < N, other=0.0)
                acc = acc + bias.to(tl.float32)[None, :]
            out = c_ptr + rows.to(tl.int64)[:, None] * stride_cm + cols[None, :] * stride_cn
            tl.store(out, acc.to(c_ptr.dtype.element_ty), mask=(rows[:, None] < M) & (cols[None, :] < N))


@functools.lru_cache(maxsize=8)
def _programs(device_index: int | None) -> int:
    if torch.cuda.is_available() and device_index is not None:
        return torch.cuda.get_device_properties(device_index).multi_processor_count
    return 4  # the interpreter: a few programs, so that the tile walk is exercised


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """`x @ weight.T + bias` over the last dimension of x, batch-invariantly (see the module doc).
    x: [..., K]; weight: [N, K]; bias: [N] or None. The output has x's dtype."""
    if triton is None:
        raise RuntimeError("the batch-invariant matmul needs triton")
    lead = x.shape[:-1]
    a = x.reshape(-1, x.shape[-1])
    if not a.is_contiguous():
        a = a.contiguous()
    M, K = a.shape
    N = weight.shape[0]
    if weight.shape[1] != K:
        raise ValueError(f"x has {K} features, the weight expects {weight.shape[1]}")
    out = torch.empty(M, N, dtype=x.dtype, device=x.device)
    if M == 0:
        return out.view(*lead, N)
    cfg = CONFIG
    tiles = triton.cdiv(M, cfg["BLOCK_M"]) * triton.cdiv(N, cfg["BLOCK_N"])
    # The number of programs changes which program takes which tile, never a tile's arithmetic.
    programs = min(_programs(x.device.index if x.is_cuda else None), tiles)
    _linear_kernel[(programs,)](
        a, weight, bias if bias is not None else weight, out, M, N, K, programs,
        a.stride(0), a.stride(1), weight.stride(0), weight.stride(1), out.stride(0), out.stride(1),
        HAS_BIAS=bias is not None, IEEE=x.dtype == torch.float32,
        BLOCK_M=cfg["BLOCK_M"], BLOCK_N=cfg["BLOCK_N"], BLOCK_K=cfg["BLOCK_K"], GROUP_M=cfg["GROUP_M"],
        num_stages=cfg["num_stages"], num_warps=cfg["num_warps"],  # pyright: ignore[reportCallIssue]  # launch options
    )
    return out.view(*lead, N)
