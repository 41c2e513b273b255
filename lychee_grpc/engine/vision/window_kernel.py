"""The vision tower's window attention and its rotary embedding as one Triton kernel.

In 28 of the tower's 32 layers every patch attends only within its window (at most 64 patches
for Qwen2.5-VL: 112-px windows of 14-px patches). There the work is memory-bound: for 100
448x448 images a layer reads 0.8 GB of q/k/v and does only ~35 GFLOP. Separately, the rotary
embedding reads q and k and writes them back rotated, then the attention reads them again
(0.34 + 0.54 ms per layer on an H100; 0.83 ms on an H200, where this kernel takes 0.63). It
reads q, k and v once, straight from the packed qkv projection [n, 3 * heads * head_dim], rotates
q and k in registers with the same float32 arithmetic as transformers' `apply_rotary_pos_emb_vision`
(rounded back to the model's dtype before the products, as there), and writes the attention
output as [n, heads * head_dim], the layout the output projection reads.

One program computes one (window, head): all its rows at once (softmax over at most 64 keys,
no running maximum needed). Programs run heads first: a window's 16 programs run together, so the
window's float32 cos/sin rows (read by every head) and its qkv rows come from DRAM once and from
L2 for the other heads. With windows first, each head re-read the whole layer's cos/sin, ~1 GB
per layer for 100 images against 0.8 GB of qkv. The head dimension (80) is split into a 64-wide
and a 16-wide part, so no product is padded. Full-attention layers keep cuDNN's kernel (an image has 1,024 patches
at 448x448); they come here only for images of at most 64 patches.
"""

from __future__ import annotations

import logging

import torch

log = logging.getLogger(__name__)

try:
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - triton ships with CUDA builds of torch
    triton = None

MAX_WINDOW = 64  # rows of one program; longer chunks go to the generic path
# 8 warps: with 4, Triton 3.6's code for this kernel read past its shared memory on an H200
# (compute-sanitizer memcheck; wrong outputs, then an illegal address: bench/RESULTS.md, "Window
# kernel under compute-sanitizer"). `python -m bench.kernels.window_kernel_check` runs every window
# geometry, under compute-sanitizer when wrapped in it.
KERNEL_OPTIONS = {"num_warps": 8}

if triton is not None:

    @triton.jit
    def _rotated(base, rows, valid, cos_ptr, sin_ptr, d, HALF: tl.constexpr, D: tl.constexpr, ROW: tl.constexpr):
        # x*cos + rotate_half(x)*sin in float32, rotate_half(x)[d] = -x[d+half] (d < half) or x[d-half].
        x = tl.load(base + rows[:, None] * ROW + d[None, :], mask=valid[:, None], other=0.0).to(tl.float32)
        partner_d = tl.where(d < HALF, d + HALF, d - HALF)
        partner = tl.load(base + rows[:, None] * ROW + partner_d[None, :], mask=valid[:, None], other=0.0)
        partner = tl.where((d < HALF)[None, :], -partner.to(tl.float32), partner.to(tl.float32))
        cos = tl.load(cos_ptr + rows[:, None] * D + d[None, :], mask=valid[:, None], other=0.0).to(tl.float32)
        sin = tl.load(sin_ptr + rows[:, None] * D + d[None, :], mask=valid[:, None], other=0.0).to(tl.float32)
        return x * cos + partner * sin

    @triton.jit
    def _window_attention_rope_kernel(
        qkv_ptr, cos_ptr, sin_ptr, out_ptr, cu_ptr, scale,
        H: tl.constexpr, D: tl.constexpr, HALF: tl.constexpr, DA: tl.constexpr, DB: tl.constexpr,
        BLOCK: tl.constexpr,
    ):
        program = tl.program_id(0)
        window = program // H
        head = program % H
        start = tl.load(cu_ptr + window)
        length = tl.load(cu_ptr + window + 1) - start
        rows = tl.arange(0, BLOCK)
        valid = rows < length
        ROW: tl.constexpr = 3 * H * D
        q_base = qkv_ptr + start * ROW + head * D
        k_base = q_base + H * D
        v_base = k_base + H * D
        cos_base = cos_ptr + start * D
        sin_base = sin_ptr + start * D
        da = tl.arange(0, DA)
        db = DA + tl.arange(0, DB)
        dtype = qkv_ptr.dtype.element_ty
        qa = _rotated(q_base, rows, valid, cos_base, sin_base, da, HALF, D, ROW).to(dtype)
        qb = _rotated(q_base, rows, valid, cos_base, sin_base, db, HALF, D, ROW).to(dtype)
        ka = _rotated(k_base, rows, valid, cos_base, sin_base, da, HALF, D, ROW).to(dtype)
        kb = _rotated(k_base, rows, valid, cos_base, sin_base, db, HALF, D, ROW).to(dtype)
        s = tl.dot(qa, tl.trans(ka)) + tl.dot(qb, tl.trans(kb))  # float32
        s = tl.where(valid[None, :], s * scale, float("-inf"))
        p = tl.exp(s - tl.max(s, axis=1)[:, None])
        va = tl.load(v_base + rows[:, None] * ROW + da[None, :], mask=valid[:, None], other=0.0)
        vb = tl.load(v_base + rows[:, None] * ROW + db[None, :], mask=valid[:, None], other=0.0)
        total = tl.sum(p, axis=1)[:, None]  # normalised after the products, as flash attention does
        p = p.to(dtype)
        oa = tl.dot(p, va) / total
        ob = tl.dot(p, vb) / total
        o_base = out_ptr + start * (H * D) + head * D
        tl.store(o_base + rows[:, None] * (H * D) + da[None, :], oa.to(dtype), mask=valid[:, None])
        tl.store(o_base + rows[:, None] * (H * D) + db[None, :], ob.to(dtype), mask=valid[:, None])


def _split(head_dim: int) -> tuple[int, int] | None:
    """The head dimension as a power of two plus 16 (80 = 64 + 16), the two parts the kernel multiplies."""
    rest = head_dim - 16
    return (rest, 16) if rest >= 16 and rest & (rest - 1) == 0 else None


def supported(qkv: torch.Tensor, heads: int, max_len: int) -> bool:
    """Whether the kernel takes this layer: CUDA, half precision, windows of at most MAX_WINDOW rows."""
    return (
        triton is not None
        and qkv.is_cuda
        and qkv.dtype in (torch.bfloat16, torch.float16)
        and qkv.is_contiguous()
        and max_len <= MAX_WINDOW
        and _split(qkv.shape[-1] // (3 * heads)) is not None
    )


def window_attention_rope(
    qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, cu_seqlens: torch.Tensor, windows: int,
    heads: int, scale: float,
) -> torch.Tensor:
    """Attention within each `cu_seqlens` chunk (all at most MAX_WINDOW rows) of the rotated q, k
    and v of `qkv` [n, 3 * heads * head_dim]; cos/sin [n, head_dim]. Returns [n, heads * head_dim]."""
    n = qkv.shape[0]
    head_dim = qkv.shape[-1] // (3 * heads)
    split = _split(head_dim)
    if split is None:
        raise ValueError(f"head dim {head_dim} is not a power of two plus 16")
    out = qkv.new_empty(n, heads * head_dim)
    _window_attention_rope_kernel[(windows * heads,)](
        qkv, cos.contiguous(), sin.contiguous(), out, cu_seqlens, scale,
        H=heads, D=head_dim, HALF=head_dim // 2, DA=split[0], DB=split[1], BLOCK=MAX_WINDOW,
        num_warps=KERNEL_OPTIONS["num_warps"],  # pyright: ignore[reportCallIssue]  # a launch option
    )
    return out
