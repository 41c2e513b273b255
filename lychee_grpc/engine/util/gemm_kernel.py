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
from typing import Any

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - triton ships with CUDA builds of torch
    triton = None

# Fixed for every shape (the point of the kernel). 128x256x64, 3 stages, 8 warps: the Triton
# tutorial's persistent-matmul setting for Hopper; bench/kernels/invariant.py times it here.
# TMA: 1 loads the tiles through tensor-memory-accelerator descriptors (Hopper and later), 0 through
# pointers; the products and their order are the same either way.
CONFIG = {"BLOCK_M": 128, "BLOCK_N": 256, "BLOCK_K": 64, "GROUP_M": 8, "num_stages": 3, "num_warps": 8, "TMA": 0}
# Per weight shape (N, K) of the 7B, what differs from CONFIG: the fastest candidate summed over
# the shape's row counts on an H200 (bench/kernels/gemm_tiles.py, bench/results/nvidia-h200-gemm-tiles.txt:
# 1.24x cuBLAS with CONFIG alone, 1.11x with these). Keyed by the weight, so a row still meets
# the same tile at every batch size.
TILES: dict[tuple[int, int], dict[str, int]] = {
    (3584, 3584): {"BLOCK_N": 128, "num_stages": 4, "TMA": 1},  # LM q/o
    (512, 3584): {"BLOCK_N": 128, "num_stages": 4},  # LM k/v
    (18944, 3584): {"TMA": 1},  # LM gate/up
    (3584, 18944): {"TMA": 1},  # LM down
    (3840, 1280): {"num_stages": 4},  # ViT qkv
    (1280, 1280): {"num_stages": 4},  # ViT proj
    (3424, 1280): {"TMA": 1},  # ViT gate/up
    (1280, 3424): {"TMA": 1},  # ViT down
    (5120, 5120): {"TMA": 1},  # merger 1
    (3584, 5120): {"BLOCK_N": 128, "num_stages": 4, "TMA": 1},  # merger 2
}

if triton is not None:

    @triton.jit
    def tile_at(tile, tiles_m, tiles_n, GROUP_M: tl.constexpr):
        """The (row, column) tile of the `tile`-th step of the walk, grouped GROUP_M tiles along M
        so that neighbouring programs share the weight's tiles in L2."""
        per_group = GROUP_M * tiles_n
        first_m = (tile // per_group) * GROUP_M
        group_size = min(tiles_m - first_m, GROUP_M)
        return first_m + (tile % per_group) % group_size, (tile % per_group) // group_size

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
        offs_k = tl.arange(0, BLOCK_K)
        for tile in tl.range(pid, tiles_m * tiles_n, num_programs):
            tile_m, tile_n = tile_at(tile, tiles_m, tiles_n, GROUP_M)  # pyright: ignore[reportGeneralTypeIssues]  # jit inlined
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

    @triton.jit(do_not_specialize=["M", "num_programs"])
    def _linear_kernel_tma(
        a_ptr, w_ptr, bias_ptr, c_ptr, M, N, K, num_programs,
        HAS_BIAS: tl.constexpr, IEEE: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
    ):
        # Descriptors built on the device: host-built ones are encoded by the launcher at every
        # call (~200 matmuls a forward), which doubled a single pair's time on an H200.
        a_desc = tl.make_tensor_descriptor(a_ptr, shape=[M, K], strides=[K, 1], block_shape=[BLOCK_M, BLOCK_K])  # pyright: ignore[reportArgumentType]
        w_desc = tl.make_tensor_descriptor(w_ptr, shape=[N, K], strides=[K, 1], block_shape=[BLOCK_N, BLOCK_K])  # pyright: ignore[reportArgumentType]
        c_desc = tl.make_tensor_descriptor(c_ptr, shape=[M, N], strides=[N, 1], block_shape=[BLOCK_M, BLOCK_N])  # pyright: ignore[reportArgumentType]
        pid = tl.program_id(0)
        tiles_m = tl.cdiv(M, BLOCK_M)
        tiles_n = tl.cdiv(N, BLOCK_N)
        k_tiles = tl.cdiv(K, BLOCK_K)
        for tile in tl.range(pid, tiles_m * tiles_n, num_programs):
            tile_m, tile_n = tile_at(tile, tiles_m, tiles_n, GROUP_M)  # pyright: ignore[reportGeneralTypeIssues]  # jit inlined
            # Rows past M and the K tail read as zeros (the descriptor's padding), stores past M
            # and N are dropped: the same products as the pointer kernel's masked loads.
            acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
            for kt in range(k_tiles):
                a = a_desc.load([tile_m * BLOCK_M, kt * BLOCK_K])
                w = w_desc.load([tile_n * BLOCK_N, kt * BLOCK_K])
                if IEEE:
                    acc = tl.dot(a, w.T, acc, input_precision="ieee")
                else:
                    acc = tl.dot(a, w.T, acc)
            if HAS_BIAS:
                cols = tile_n * BLOCK_N + tl.arange(0, BLOCK_N)
                bias = tl.load(bias_ptr + cols, mask=cols < N, other=0.0)
                acc = acc + bias.to(tl.float32)[None, :]
            c_desc.store([tile_m * BLOCK_M, tile_n * BLOCK_N], acc.to(c_ptr.dtype.element_ty))


def descriptor_scratch(size: int, alignment: int, stream: int | None) -> torch.Tensor:
    """Global memory for the descriptors the TMA kernels build on the device (this module's and
    util/swiglu_kernel.py's)."""
    return torch.empty(size, dtype=torch.int8, device="cuda" if torch.cuda.is_available() else "cpu")


@functools.lru_cache(maxsize=8)
def programs_for(device_index: int | None) -> int:
    """A persistent kernel's grid: one program per multiprocessor."""
    if torch.cuda.is_available() and device_index is not None:
        return torch.cuda.get_device_properties(device_index).multi_processor_count
    return 4  # the interpreter: a few programs, so that the tile walk is exercised


def tile_for(n: int, k: int) -> dict[str, int]:
    """The tile for a weight of N x K: chosen by the weight's shape alone, never by the batch's."""
    return {**CONFIG, **TILES.get((n, k), {})}


def linear(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, config: dict[str, int] | None = None
) -> torch.Tensor:
    """`x @ weight.T + bias` over the last dimension of x, batch-invariantly (see the module doc).
    x: [..., K]; weight: [N, K]; bias: [N] or None. The output has x's dtype. `config` overrides
    the weight's tile (the kernel benches)."""
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
    cfg = {**tile_for(N, K), **(config or {})}
    bm, bn, bk = cfg["BLOCK_M"], cfg["BLOCK_N"], cfg["BLOCK_K"]
    tiles = triton.cdiv(M, bm) * triton.cdiv(N, bn)
    # The number of programs changes which program takes which tile, never a tile's arithmetic.
    programs = min(programs_for(x.device.index if x.is_cuda else None), tiles)
    common: dict[str, Any] = dict(  # constexprs and launch options
        HAS_BIAS=bias is not None, IEEE=x.dtype == torch.float32, BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk,
        GROUP_M=cfg["GROUP_M"], num_stages=cfg["num_stages"], num_warps=cfg["num_warps"],
    )
    bias_arg = bias if bias is not None else weight
    # Descriptors need 16-byte rows; whether they are used depends on the weight's shape alone.
    if cfg.get("TMA") and (K * x.element_size()) % 16 == 0 and (N * x.element_size()) % 16 == 0:
        if a.data_ptr() % 16:
            a = a.clone()  # a view starting mid-row: the same values, aligned
        w = weight if weight.is_contiguous() and weight.data_ptr() % 16 == 0 else weight.contiguous().clone()
        triton.set_allocator(descriptor_scratch)  # a context variable: set in the calling thread's context
        _linear_kernel_tma[(programs,)](a, w, bias_arg, out, M, N, K, programs, **common)
        return out.view(*lead, N)
    _linear_kernel[(programs,)](
        a, weight, bias_arg, out, M, N, K, programs,
        a.stride(0), a.stride(1), weight.stride(0), weight.stride(1), out.stride(0), out.stride(1), **common,
    )
    return out.view(*lead, N)
