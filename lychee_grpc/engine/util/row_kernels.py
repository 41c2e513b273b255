"""Row reductions, one Triton program per row: RMSNorm, the residual add followed by RMSNorm, and
the score's dot product with (W_yes - W_no). The batch-invariant mode's, and the default mode's
norms on CUDA too, where they ran 1.1-2.4x faster than torch.compile's (bench/RESULTS.md).

A reduction's order must not depend on how many rows there are. torch's own reductions, and
the kernels torch.compile generates, choose their strategy from the shape: with few rows they
split a row over several blocks (a batch of one is reduced differently from a batch of 100).
Here a row is always reduced by one program over a fixed power-of-two block, in the same tree.
The arithmetic is transformers' Qwen2RMSNorm: float32 statistics, the normalised row rounded to
the input dtype, then scaled by the weight in that dtype.
"""

from __future__ import annotations

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - triton ships with CUDA builds of torch
    triton = None

NUM_WARPS = 8

if triton is not None:

    @triton.jit
    def _normalise(s, w_ptr, cols, mask, H, eps, dtype: tl.constexpr):
        var = tl.sum(s * s, axis=0) / H
        y = (s * (1.0 / tl.sqrt(var + eps))).to(dtype)
        w = tl.load(w_ptr + cols, mask=mask, other=0.0)
        return (w.to(tl.float32) * y.to(tl.float32)).to(dtype)

    @triton.jit
    def _rms_norm_kernel(x_ptr, w_ptr, out_ptr, stride_x, stride_o, H, eps, BLOCK: tl.constexpr):
        row = tl.program_id(0).to(tl.int64)
        cols = tl.arange(0, BLOCK)
        mask = cols < H
        dtype = out_ptr.dtype.element_ty
        s = tl.load(x_ptr + row * stride_x + cols, mask=mask, other=0.0).to(tl.float32)
        tl.store(out_ptr + row * stride_o + cols, _normalise(s, w_ptr, cols, mask, H, eps, dtype), mask=mask)

    @triton.jit
    def _add_rms_norm_kernel(x_ptr, d_ptr, w_ptr, sum_ptr, out_ptr, stride_x, stride_d, stride_o, H, eps,
                             BLOCK: tl.constexpr):
        row = tl.program_id(0).to(tl.int64)
        cols = tl.arange(0, BLOCK)
        mask = cols < H
        dtype = out_ptr.dtype.element_ty
        x = tl.load(x_ptr + row * stride_x + cols, mask=mask, other=0.0).to(tl.float32)
        d = tl.load(d_ptr + row * stride_d + cols, mask=mask, other=0.0).to(tl.float32)
        total = (x + d).to(dtype)  # the residual stream, rounded as `x + delta` rounds it
        tl.store(sum_ptr + row * stride_o + cols, total, mask=mask)
        s = total.to(tl.float32)
        tl.store(out_ptr + row * stride_o + cols, _normalise(s, w_ptr, cols, mask, H, eps, dtype), mask=mask)

    @triton.jit
    def _row_dot_kernel(h_ptr, w_ptr, out_ptr, stride_h, H, BLOCK: tl.constexpr):
        row = tl.program_id(0).to(tl.int64)
        cols = tl.arange(0, BLOCK)
        mask = cols < H
        h = tl.load(h_ptr + row * stride_h + cols, mask=mask, other=0.0).to(tl.float32)
        w = tl.load(w_ptr + cols, mask=mask, other=0.0).to(tl.float32)
        tl.store(out_ptr + row, tl.sum(h * w, axis=0))


def _rows(x: torch.Tensor) -> torch.Tensor:
    x = x.reshape(-1, x.shape[-1])
    return x if x.stride(-1) == 1 else x.contiguous()


def _block(width: int) -> int:
    """The power of two at or above `width`: one program covers a whole row."""
    return 1 << (width - 1).bit_length()


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    rows = _rows(x)
    out = torch.empty(rows.shape, dtype=x.dtype, device=x.device)
    if rows.shape[0]:
        H = rows.shape[1]
        _rms_norm_kernel[(rows.shape[0],)](rows, weight, out, rows.stride(0), out.stride(0), H, eps,
                                          BLOCK=_block(H), num_warps=NUM_WARPS)  # pyright: ignore[reportCallIssue]  # a launch option
    return out.view(x.shape)


def add_rms_norm(x: torch.Tensor, delta: torch.Tensor, weight: torch.Tensor, eps: float
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """(x + delta, rms_norm(x + delta)), as two new tensors."""
    rows, d = _rows(x), _rows(delta)
    total = torch.empty(rows.shape, dtype=x.dtype, device=x.device)
    out = torch.empty_like(total)
    if rows.shape[0]:
        H = rows.shape[1]
        _add_rms_norm_kernel[(rows.shape[0],)](rows, d, weight, total, out, rows.stride(0), d.stride(0),
                                              out.stride(0), H, eps, BLOCK=_block(H),
                                              num_warps=NUM_WARPS)  # pyright: ignore[reportCallIssue]  # a launch option
    return total.view(x.shape), out.view(x.shape)


def row_dot(h: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """float32 h[i] . w for every row i of h [n, H]; w [H] float32."""
    rows = _rows(h)
    out = torch.empty(rows.shape[0], dtype=torch.float32, device=h.device)
    if rows.shape[0]:
        H = rows.shape[1]
        _row_dot_kernel[(rows.shape[0],)](rows, w, out, rows.stride(0), H, BLOCK=_block(H),
                                         num_warps=NUM_WARPS)  # pyright: ignore[reportCallIssue]  # a launch option
    return out
