"""The rotary embeddings, `x * cos + rotate_half(x) * sin`, as Triton kernels with eager torch's
roundings, bit for bit the eager result, and elementwise, so a row's result never depends on the
rows beside it (the batch-invariant mode uses them too):

- `rope`, the language model's, in bfloat16: each product is rounded to bfloat16, then their sum
  (as the three eager ops round);
- `vision_qk_rope`, the vision tower's queries and keys read from its packed qkv projection, in
  float32 and rounded once at the end (transformers' apply_rotary_pos_emb_vision). Compiled without
  floating-point contraction (`enable_fp_fusion=False`): an FMA would skip a product's float32
  rounding. It replaces the last torch.compile'd kernel of the serving path.

The LM's kernel replaced a torch.compile'd one too: at T100's rows it takes 52 against 62-76 us of
the GPU a call and 37-40 against 60-90 us of the launching thread (dynamo's guards and wrappers),
55 calls a pass of the language model; in a small batch's CUDA graph it is one kernel where
eager's four ran (`python -m bench.kernels.rope`; bench/RESULTS.md).
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

    @triton.jit
    def _vision_qk_kernel(qkv_ptr, cos_ptr, sin_ptr, out_ptr, heads, qkv_row, t_row,
                          HALF: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_D: tl.constexpr,
                          BF16: tl.constexpr):
        # One row (token) and one of q, k a program, every head.
        r = tl.program_id(0).to(tl.int64)
        which = tl.program_id(1)
        h = tl.arange(0, BLOCK_H)[:, None]
        d = tl.arange(0, BLOCK_D)[None, :]
        inside = d < HALF
        mask = (h < heads) & inside
        xa = qkv_ptr + r * qkv_row + (which * heads + h) * (2 * HALF) + d
        x1 = tl.load(xa, mask=mask, other=0.0).to(tl.float32)
        x2 = tl.load(xa + HALF, mask=mask, other=0.0).to(tl.float32)
        ta = r * t_row + d
        c1 = tl.load(cos_ptr + ta, mask=inside, other=0.0).to(tl.float32)
        c2 = tl.load(cos_ptr + ta + HALF, mask=inside, other=0.0).to(tl.float32)
        s1 = tl.load(sin_ptr + ta, mask=inside, other=0.0).to(tl.float32)
        s2 = tl.load(sin_ptr + ta + HALF, mask=inside, other=0.0).to(tl.float32)
        # Each product and the sum rounded in float32 (no contraction: see the launch), once to
        # the output's type at the end (to bfloat16 by `_bf16_bits`, which rounds to nearest even
        # under Triton's interpreter too, whose cast truncates).
        o1 = x1 * c1 - x2 * s1
        o2 = x2 * c2 + x1 * s2
        oa = out_ptr + ((r * 2 + which) * heads + h) * (2 * HALF) + d
        if BF16:
            tl.store(oa, _bf16_bits(o1).to(tl.uint16).to(tl.bfloat16, bitcast=True), mask=mask)
            tl.store(oa + HALF, _bf16_bits(o2).to(tl.uint16).to(tl.bfloat16, bitcast=True), mask=mask)
        else:
            tl.store(oa, o1.to(out_ptr.dtype.element_ty), mask=mask)
            tl.store(oa + HALF, o2.to(out_ptr.dtype.element_ty), mask=mask)


def vision_supported(qkv: torch.Tensor, heads: int, cos: torch.Tensor, sin: torch.Tensor) -> bool:
    """Whether `vision_qk_rope` takes these: qkv [rows, 3 * heads * dim] in bfloat16 or float16,
    rows contiguous, dim even; cos and sin [rows, dim] alike, contiguous (float32, the tower's, or
    qkv's type)."""
    rows = qkv.shape[0] if qkv.dim() == 2 else -1
    dim = qkv.shape[1] // (3 * heads) if rows >= 0 and heads > 0 else 0
    return (qkv.dtype in (torch.bfloat16, torch.float16) and dim > 0 and dim % 2 == 0
            and qkv.shape[1] == 3 * heads * dim and qkv.stride(1) == 1
            and cos.shape == sin.shape == (rows, dim) and cos.stride() == sin.stride() and cos.stride(1) == 1
            and cos.dtype == sin.dtype and cos.dtype in (torch.float32, qkv.dtype))


def vision_qk_rope(qkv: torch.Tensor, heads: int, cos: torch.Tensor,
                   sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The rotated queries and keys [rows, heads, dim] of the vision attention's packed qkv
    projection (`vision_supported`): views of one [rows, 2, heads, dim] tensor, as the eager
    function (lm/fused.py `vision_qk_rope`) returns them, with its bits."""
    if not vision_supported(qkv, heads, cos, sin):
        raise ValueError(f"vision_qk_rope: qkv {tuple(qkv.shape)} {qkv.dtype} (strides {qkv.stride()}) with "
                         f"{heads} heads, cos {tuple(cos.shape)} {cos.dtype} and sin {tuple(sin.shape)} {sin.dtype} "
                         "is not a layout this kernel takes")
    rows = qkv.shape[0]
    dim = qkv.shape[1] // (3 * heads)
    out = torch.empty(rows, 2, heads, dim, dtype=qkv.dtype, device=qkv.device)
    if rows:
        # num_warps and enable_fp_fusion are launch options, which pyright does not see.
        _vision_qk_kernel[(rows, 2)](qkv, cos, sin, out, heads, qkv.stride(0), cos.stride(0), HALF=dim // 2,
                                     BLOCK_H=1 << (heads - 1).bit_length(),
                                     BLOCK_D=1 << (dim // 2 - 1).bit_length(), BF16=qkv.dtype == torch.bfloat16,
                                     num_warps=NUM_WARPS, enable_fp_fusion=False)  # pyright: ignore[reportCallIssue]
    return out[:, 0], out[:, 1]


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
