"""The batch-invariant mode's matmuls and row reductions: fixed reduction orders, so that a row's
result never depends on the other rows computed with it (bench/RESULTS.md, "Batch-invariant mode").

On CUDA they are Triton kernels (gemm_kernel.py, row_kernels.py). Elsewhere (the CPU, or a build
without Triton) every call has a shape that does not depend on the batch either: a matmul is one
vector-matrix product per row, on a fresh (aligned) copy of the row; a dot product likewise; and
the activations that round differently in torch's vector and scalar CPU code (`rowwise`) run a
row at a time. These fallbacks are slow and exist so that the mode means the same thing on any
device; the CPU tests check them bitwise with the tiny model.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from . import gemm_kernel, row_kernels, silu_kernel


def _triton_on(t: torch.Tensor) -> bool:
    return t.is_cuda and gemm_kernel.triton is not None


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    if _triton_on(x):
        return gemm_kernel.linear(x, weight, bias)
    rows = x.reshape(-1, x.shape[-1])
    out = x.new_empty(rows.shape[0], weight.shape[0])
    for i in range(rows.shape[0]):
        out[i] = F.linear(rows[i].clone(), weight, bias)
    return out.view(*x.shape[:-1], weight.shape[0])


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    if _triton_on(x):
        return row_kernels.rms_norm(x, weight, eps)
    h = x.float()
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return weight * h.to(x.dtype)


def add_rms_norm(x: torch.Tensor, delta: torch.Tensor, weight: torch.Tensor, eps: float
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    if _triton_on(x):
        return row_kernels.add_rms_norm(x, delta, weight, eps)
    x = x + delta
    return x, rms_norm(x, weight, eps)


def row_dot(h: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """float32 h[i] . w per row."""
    if _triton_on(h):
        return row_kernels.row_dot(h, w)
    rows = h.reshape(-1, h.shape[-1]).float()
    return torch.stack([torch.dot(rows[i].clone(), w) for i in range(rows.shape[0])]) if rows.shape[0] \
        else rows.new_empty(0)


def rowwise(fn: Callable[..., torch.Tensor], *xs: torch.Tensor) -> torch.Tensor:
    """`fn(*xs)` for an elementwise `fn` of tensors shaped alike, one row (last dimension) at a time
    on the CPU. torch's CPU loops give each thread a piece of the flat tensor, and a piece's last
    elements that fill no whole vector run scalar code, whose exp rounds unlike the vector code's:
    with 16 threads, SiLU gave one row of 1,280 identical rows other bits. A row alone is one
    thread's loop, its elements always at the same places in it. Elsewhere `fn(*xs)` as it is."""
    first = xs[0]
    if first.device.type != "cpu" or first.dim() < 2:
        return fn(*xs)
    rows = [x.reshape(-1, x.shape[-1]) for x in xs]
    out = torch.empty_like(rows[0])
    for i in range(out.shape[0]):
        out[i] = fn(*(r[i] for r in rows))
    return out.view(first.shape)


def silu_mul(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """SiLU(gate) * up, each element as eager torch computes it wherever its row lies."""
    if gate.is_cuda and silu_kernel.triton is not None:
        return silu_kernel.silu_mul(gate, up)
    return rowwise(lambda g, u: F.silu(g) * u, gate, up)
