"""A probe for a GEMM epilogue: gate and up projections and SiLU(gate) * up as ONE Triton kernel
(two accumulators over the same input tile; the epilogue rounds as eager torch does: gate and up
to bf16 after their bias, SiLU to bf16, the product to bf16), against what the engine runs:
cuBLAS for gate, cuBLAS for up, then util/silu_kernel.py. Timed at the vision tower's shape (100
448x448 images) and the LM's (T100). The fused kernel never writes gate and up: 2 x M x N x 2
bytes less to write and to read back. Random inputs; RANDOM weights.

    python -m bench.kernels.swiglu_gemm
"""

from __future__ import annotations

import sys

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from bench.harness.timing import time_ms
from lychee_grpc.engine.util import silu_kernel
from lychee_grpc.engine.util.gemm_kernel import _programs, _scratch, _tile_at


@triton.jit(do_not_specialize=["M", "num_programs"])
def _swiglu_kernel(
    a_ptr, g_ptr, u_ptr, gb_ptr, ub_ptr, c_ptr, M, N, K, num_programs,
    HAS_BIAS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr,
):
    a_desc = tl.make_tensor_descriptor(a_ptr, shape=[M, K], strides=[K, 1], block_shape=[BLOCK_M, BLOCK_K])
    g_desc = tl.make_tensor_descriptor(g_ptr, shape=[N, K], strides=[K, 1], block_shape=[BLOCK_N, BLOCK_K])
    u_desc = tl.make_tensor_descriptor(u_ptr, shape=[N, K], strides=[K, 1], block_shape=[BLOCK_N, BLOCK_K])
    c_desc = tl.make_tensor_descriptor(c_ptr, shape=[M, N], strides=[N, 1], block_shape=[BLOCK_M, BLOCK_N])
    pid = tl.program_id(0)
    tiles_m = tl.cdiv(M, BLOCK_M)
    tiles_n = tl.cdiv(N, BLOCK_N)
    k_tiles = tl.cdiv(K, BLOCK_K)
    dtype = c_ptr.dtype.element_ty
    for tile in tl.range(pid, tiles_m * tiles_n, num_programs):
        tile_m, tile_n = _tile_at(tile, tiles_m, tiles_n, GROUP_M)
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


def swiglu(x, wg, wu, bg, bu, bm=128, bn=128, bk=64, stages=3, warps=8, group=8):
    M, K = x.shape
    N = wg.shape[0]
    out = torch.empty(M, N, dtype=x.dtype, device=x.device)
    tiles = triton.cdiv(M, bm) * triton.cdiv(N, bn)
    programs = min(_programs(x.device.index), tiles)
    triton.set_allocator(_scratch)
    _swiglu_kernel[(programs,)](x, wg, wu, bg if bg is not None else wg, bu if bu is not None else wu, out,
                                M, N, K, programs, HAS_BIAS=bg is not None, BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk,
                                GROUP_M=group, num_stages=stages, num_warps=warps)
    return out


def compare(label: str, m: int, k: int, n: int, bias: bool) -> None:
    dev, bf = "cuda", torch.bfloat16
    x = torch.randn(m, k, device=dev, dtype=bf)
    wg = torch.randn(n, k, device=dev, dtype=bf) / k**0.5
    wu = torch.randn(n, k, device=dev, dtype=bf) / k**0.5
    bg = torch.randn(n, device=dev, dtype=bf) if bias else None
    bu = torch.randn(n, device=dev, dtype=bf) if bias else None

    def engine():
        return silu_kernel.silu_mul(F.linear(x, wg, bg), F.linear(x, wu, bu))

    want = engine()
    base = time_ms(engine, iters=20, warmup=3)
    gemms = time_ms(lambda: (F.linear(x, wg, bg), F.linear(x, wu, bu)), iters=20, warmup=3)
    print(f"{label}: engine {base:.3f} ms (cuBLAS x2 {gemms:.3f}, {4 * m * k * n / gemms / 1e9:.0f} TFLOP/s)")
    for cfg in ((128, 128, 64, 3, 8), (128, 128, 64, 4, 8), (128, 64, 64, 4, 4), (64, 128, 64, 4, 4)):
        try:
            got = swiglu(x, wg, wu, bg, bu, *cfg)
            ms = time_ms(lambda cfg=cfg: swiglu(x, wg, wu, bg, bu, *cfg), iters=20, warmup=3)
            diff = float((got.float() - want.float()).abs().max())
            print(f"  fused {cfg}: {ms:.3f} ms = {base / ms:.2f}x the engine's, max diff {diff:.3g}")
        except Exception as exc:  # a config that does not fit is a result too
            print(f"  fused {cfg}: failed ({type(exc).__name__}: {str(exc)[:120]})")


def main() -> int:
    print("RANDOM inputs and weights; fused gate/up + SiLU*up against cuBLAS x2 + the SiLU kernel")
    compare("ViT gate/up, 100 images", 102400, 1280, 3424, True)
    compare("LM gate/up, T100", 10889, 3584, 18944, False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
