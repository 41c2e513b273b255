"""The language model's rotary embedding, `x * cos + rotate_half(x) * sin`, as one Triton kernel
for bfloat16 with eager torch's roundings: each product is rounded to bfloat16, then their sum (as
the three eager ops round). Bit for bit the eager result, and elementwise, so a row's result never
depends on the rows beside it (the batch-invariant mode uses it too).

It replaces a torch.compile'd kernel: at T100's rows it takes 52 against 62-76 us of the GPU a
call and 37-40 against 60-90 us of the launching thread (dynamo's guards and wrappers), 55 calls a
pass of the language model; in a small batch's CUDA graph it is one kernel where eager's four ran
(`python -m bench.kernels.rope`; bench/RESULTS.md).
"""

from __future__ import annotations

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - triton ships with CUDA builds of torch
    triton = None

NUM_WARPS = 4

if triton is not None:

    @triton.jit
    def _bf16_bits(p):
        """float32 rounded to bfloat16, to nearest even: its 16 bits, in a uint32. Integer arithmetic,
        because LLVM narrows a float32 product and sum that are each cast to bfloat16 into one
        bfloat16 FMA (`fma.rn.bf16x2`), which skips the product's rounding: a quarter of the outputs
        came out differently on the H200 (bench/RESULTS.md). A NaN here comes from arithmetic and is
        quiet (mantissa bit 22 set), so the carry never reaches its exponent: it stays a NaN."""
        u = p.to(tl.uint32, bitcast=True)
        return (u + 0x7FFF + ((u >> 16) & 1)) >> 16

    @triton.jit
    def _rounded(p):
        return (_bf16_bits(p) << 16).to(tl.float32, bitcast=True)

    @triton.jit
    def _rope_kernel(x_ptr, cos_ptr, sin_ptr, out_ptr, heads, x_row, x_head, t_row,
                     HALF: tl.constexpr, BLOCK_H: tl.constexpr):
        # One row (token) a program, every head; each lane of the first half writes both halves.
        r = tl.program_id(0).to(tl.int64)
        h = tl.arange(0, BLOCK_H)[:, None]
        d = tl.arange(0, HALF)[None, :]
        mask = h < heads
        xa = x_ptr + r * x_row + h * x_head + d
        x1 = tl.load(xa, mask=mask, other=0.0).to(tl.float32)
        x2 = tl.load(xa + HALF, mask=mask, other=0.0).to(tl.float32)
        ta = r * t_row + d
        c1 = tl.load(cos_ptr + ta).to(tl.float32)
        c2 = tl.load(cos_ptr + ta + HALF).to(tl.float32)
        s1 = tl.load(sin_ptr + ta).to(tl.float32)
        s2 = tl.load(sin_ptr + ta + HALF).to(tl.float32)
        # x * cos and rotate_half(x) * sin, each rounded, then their sum rounded: rotate_half puts
        # -x2 in the first half and x1 in the second. A product of two bfloat16 is exact in float32.
        o1 = _bf16_bits(_rounded(x1 * c1) + _rounded(-x2 * s1))
        o2 = _bf16_bits(_rounded(x2 * c2) + _rounded(x1 * s2))
        oa = out_ptr + (r * heads + h) * (2 * HALF) + d
        tl.store(oa, o1.to(tl.uint16).to(tl.bfloat16, bitcast=True), mask=mask)
        tl.store(oa + HALF, o2.to(tl.uint16).to(tl.bfloat16, bitcast=True), mask=mask)


def supported(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> bool:
    """Whether the kernel takes these: x [rows, heads, dim] in bfloat16 (the model's dtype; the
    kernel rounds as bfloat16 rounds), its last dimension contiguous and dim twice a power of two
    (the LM's 128), cos and sin [rows, 1, dim] alike, contiguous in it, of x's dtype."""
    half = x.shape[-1] // 2 if x.dim() == 3 else 0
    return (x.dtype == torch.bfloat16 and half > 0 and x.shape[-1] == 2 * half and half & (half - 1) == 0
            and x.stride(-1) == 1
            and cos.shape == sin.shape == (x.shape[0], 1, x.shape[-1])
            and cos.stride() == sin.stride() and cos.stride(-1) == 1
            and cos.dtype == sin.dtype == x.dtype)


def rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """`x * cos + rotate_half(x) * sin` for x [rows, heads, dim] and cos, sin [rows, 1, dim]
    (`supported`), a new contiguous tensor."""
    if not supported(x, cos, sin):
        raise ValueError(f"rope: x {tuple(x.shape)} {x.dtype} (strides {x.stride()}) with cos {tuple(cos.shape)} "
                         f"{cos.dtype} and sin {tuple(sin.shape)} {sin.dtype} is not a layout this kernel takes")
    rows, heads, dim = x.shape
    out = torch.empty(rows, heads, dim, dtype=x.dtype, device=x.device)
    if rows and heads:
        _rope_kernel[(rows,)](x, cos, sin, out, heads, x.stride(0), x.stride(1), cos.stride(0), HALF=dim // 2,
                              BLOCK_H=1 << (heads - 1).bit_length(),
                              num_warps=NUM_WARPS)  # pyright: ignore[reportCallIssue]  # a launch option
    return out
