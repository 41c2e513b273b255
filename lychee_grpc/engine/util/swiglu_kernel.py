"""SiLU(x @ Wg^T + bg) * (x @ Wu^T + bu): the gate and up projections of a SwiGLU MLP and their
product as ONE persistent Triton kernel. Each program keeps two float32 accumulators over the same
tile of x; the epilogue rounds as the engine's three steps do (gate and up to the input dtype after
their bias, as cuBLAS's GEMMs return them; the SiLU to that dtype, as `F.silu` does; the product
again, as `*` does), so on the H200 its output equalled cuBLAS x2 + util/silu_kernel.py bit for
bit at the LM's and the tower's shapes (bench/kernels/swiglu_gemm.py).

What it saves: gate and up (4 x M x N bytes: 1.4 GB a layer in the tower for 100 448x448
images) are never written to memory nor read back, and one launch replaces three.

Batch-invariant as it stands: one tile for every M, no split-K, M never a specialisation key
(`do_not_specialize`), so a row's result never depends on the rows beside it; the
batch-invariant mode uses it at every size.

Needs tensor descriptors (TMA: Hopper and later) and rows of 16 bytes; `supported` says whether
a call can take it.
"""

from __future__ import annotations

from typing import Any

import torch

from .gemm_kernel import descriptor_scratch, programs_for, tile_at, triton

if triton is not None:
    import triton.language as tl

# Two 128x128 float32 accumulators (a 128x256 tile's registers), K in steps of 64, 3 stages,
# 8 warps: the fastest of twelve candidates at the tower's and the LM's large shapes on an H200
# (bench/results/nvidia-h200-swiglu.txt); Triton's flattened tile loop was 14-20% slower, warp
# specialisation level within the calls' noise, and level again in the forward.
CONFIG: dict[str, int] = {"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 64, "GROUP_M": 8, "num_stages": 3, "num_warps": 8}

if triton is not None:

    @triton.jit(do_not_specialize=["M", "num_programs"])
    def _swiglu_kernel(
        a_ptr, g_ptr, u_ptr, gb_ptr, ub_ptr, c_ptr, M, N, K, num_programs,
        HAS_BIAS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
        GROUP_M: tl.constexpr, FLATTEN: tl.constexpr, WS: tl.constexpr,
    ):
        # Descriptors built on the device, as util/gemm_kernel.py's (host-built ones cost a
        # launch's encoding at every call).
        a_desc = tl.make_tensor_descriptor(a_ptr, shape=[M, K], strides=[K, 1], block_shape=[BLOCK_M, BLOCK_K])  # pyright: ignore[reportArgumentType]
        g_desc = tl.make_tensor_descriptor(g_ptr, shape=[N, K], strides=[K, 1], block_shape=[BLOCK_N, BLOCK_K])  # pyright: ignore[reportArgumentType]
        u_desc = tl.make_tensor_descriptor(u_ptr, shape=[N, K], strides=[K, 1], block_shape=[BLOCK_N, BLOCK_K])  # pyright: ignore[reportArgumentType]
        c_desc = tl.make_tensor_descriptor(c_ptr, shape=[M, N], strides=[N, 1], block_shape=[BLOCK_M, BLOCK_N])  # pyright: ignore[reportArgumentType]
        pid = tl.program_id(0)
        tiles_m = tl.cdiv(M, BLOCK_M)
        tiles_n = tl.cdiv(N, BLOCK_N)
        k_tiles = tl.cdiv(K, BLOCK_K)
        dtype = c_ptr.dtype.element_ty
        for tile in tl.range(pid, tiles_m * tiles_n, num_programs, flatten=FLATTEN, warp_specialize=WS):
            tile_m, tile_n = tile_at(tile, tiles_m, tiles_n, GROUP_M)  # pyright: ignore[reportGeneralTypeIssues]  # jit inlined
            acc_g = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
            acc_u = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
            for kt in range(k_tiles):
                a = a_desc.load([tile_m * BLOCK_M, kt * BLOCK_K])
                acc_g = tl.dot(a, g_desc.load([tile_n * BLOCK_N, kt * BLOCK_K]).T, acc_g)
                acc_u = tl.dot(a, u_desc.load([tile_n * BLOCK_N, kt * BLOCK_K]).T, acc_u)
            if HAS_BIAS:
                cols = tile_n * BLOCK_N + tl.arange(0, BLOCK_N)
                acc_g = acc_g + tl.load(gb_ptr + cols, mask=cols < N, other=0.0).to(tl.float32)[None, :]
                acc_u = acc_u + tl.load(ub_ptr + cols, mask=cols < N, other=0.0).to(tl.float32)[None, :]
            g = acc_g.to(dtype).to(tl.float32)
            s = (g / (1.0 + tl.exp(-g))).to(dtype).to(tl.float32)
            c_desc.store([tile_m * BLOCK_M, tile_n * BLOCK_N], (s * acc_u.to(dtype).to(tl.float32)).to(dtype))


def supported(x: torch.Tensor, gate: torch.Tensor, up: torch.Tensor,
              gate_bias: torch.Tensor | None = None, up_bias: torch.Tensor | None = None) -> bool:
    """Whether `gate_up_silu` takes these operands: half-precision CUDA tensors on a GPU with
    tensor descriptors (compute capability 9+), weights of one shape, both biases or neither,
    rows of 16 bytes."""
    if triton is None or not x.is_cuda or x.dtype not in (torch.bfloat16, torch.float16):
        return False
    if (gate_bias is None) != (up_bias is None):
        return False
    if gate.shape != up.shape or gate.dtype != x.dtype or up.dtype != x.dtype or x.shape[-1] != gate.shape[1]:
        return False
    n, k = gate.shape
    return (k * x.element_size()) % 16 == 0 and (n * x.element_size()) % 16 == 0 and \
        torch.cuda.get_device_capability(x.device)[0] >= 9


def gate_up_silu(
    x: torch.Tensor, gate: torch.Tensor, up: torch.Tensor,
    gate_bias: torch.Tensor | None = None, up_bias: torch.Tensor | None = None,
    config: dict[str, Any] | None = None,
) -> torch.Tensor:
    """`F.silu(F.linear(x, gate, gate_bias)) * F.linear(x, up, up_bias)` over x's last dimension.
    `config` overrides CONFIG (the bench's sweep; FLATTEN and WS: Triton's flattened tile loop and
    warp specialisation)."""
    if triton is None:
        raise RuntimeError("gate_up_silu needs triton")
    if (gate_bias is None) != (up_bias is None):
        raise ValueError("gate_up_silu: give both biases or neither")
    lead = x.shape[:-1]
    a = x.reshape(-1, x.shape[-1])
    if not a.is_contiguous():
        a = a.contiguous()
    elif a.data_ptr() % 16:
        a = a.clone()  # a view starting mid-row: the same values, aligned
    M, K = a.shape
    N = gate.shape[0]
    out = torch.empty(M, N, dtype=x.dtype, device=x.device)
    if M == 0:
        return out.view(*lead, N)
    cfg = {**CONFIG, **(config or {})}
    bm, bn = cfg["BLOCK_M"], cfg["BLOCK_N"]
    tiles = triton.cdiv(M, bm) * triton.cdiv(N, bn)
    programs = min(programs_for(x.device.index if x.is_cuda else None), tiles)
    gate, up = (w if w.is_contiguous() and w.data_ptr() % 16 == 0 else w.contiguous().clone() for w in (gate, up))
    triton.set_allocator(descriptor_scratch)  # a context variable: set in the calling thread's context
    common: dict[str, Any] = dict(  # constexprs and launch options
        HAS_BIAS=gate_bias is not None, BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=cfg["BLOCK_K"], GROUP_M=cfg["GROUP_M"],
        FLATTEN=bool(cfg.get("FLATTEN", False)), WS=bool(cfg.get("WS", False)),
        num_stages=cfg["num_stages"], num_warps=cfg["num_warps"],
    )
    _swiglu_kernel[(programs,)](
        a, gate, up, gate_bias if gate_bias is not None else gate, up_bias if up_bias is not None else up, out,
        M, N, K, programs, **common,
    )
    return out.view(*lead, N)
