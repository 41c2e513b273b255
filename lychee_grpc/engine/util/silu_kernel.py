"""SiLU(gate) * up as one Triton kernel, with eager torch's roundings: the SiLU is computed in
float32 and rounded to the input dtype (as `F.silu` returns it), then multiplied in float32 and
rounded again (as `*` does). Bit for bit the eager result on the H200 (bench/kernels/norms.py), and
elementwise, so a row's result never depends on the rows beside it (the batch-invariant mode uses
it too).

torch.compile's fused kernel for the same two lines ran at ~3.0 TB/s at the LM's width (18,944)
and at 1,024 rows took 3x this kernel's time; this one moves its bytes at ~4.3 TB/s at every
width measured (bench/RESULTS.md).
"""

from __future__ import annotations

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - triton ships with CUDA builds of torch
    triton = None

BLOCK = 1024
NUM_WARPS = 4

if triton is not None:

    @triton.jit
    def _silu_mul_kernel(g_ptr, u_ptr, out_ptr, n, BLOCK: tl.constexpr):
        offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < n
        g = tl.load(g_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        u = tl.load(u_ptr + offs, mask=mask, other=0.0)
        s = (g / (1.0 + tl.exp(-g))).to(u.dtype)
        tl.store(out_ptr + offs, (s.to(tl.float32) * u.to(tl.float32)).to(u.dtype), mask=mask)


def silu_mul(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """`F.silu(gate) * up` for two CUDA tensors of one shape and dtype."""
    if gate.shape != up.shape or gate.dtype != up.dtype:
        raise ValueError(f"silu_mul: gate {tuple(gate.shape)} {gate.dtype} and up {tuple(up.shape)} {up.dtype} differ")
    gate, up = gate.contiguous(), up.contiguous()
    out = torch.empty_like(gate)
    n = gate.numel()
    if n:
        _silu_mul_kernel[(-(-n // BLOCK),)](gate, up, out, n, BLOCK=BLOCK,
                                                  num_warps=NUM_WARPS)  # pyright: ignore[reportCallIssue]  # a launch option
    return out
