"""Elementwise pieces of a decoder layer, written once with the same arithmetic as transformers'
Qwen2 modules, and fused on CUDA: the norms and SiLU*up as hand-written Triton kernels
(util/row_kernels.py, util/silu_kernel.py), the LM's RoPE and the vision tower's too
(util/rope_kernel.py, eager's bits); torch.compile only where Triton is missing. On the CPU, or if
a kernel fails, they run eagerly: same results, more kernels.

Between two GEMMs a layer otherwise launches ~20 small kernels (RMSNorm in float32, RoPE,
SiLU*up, residual adds); on an H100 those took about a third of a 100-document rerank.

The layers' matmuls and the score's dot product go through the same object (`linear`, `score`),
so that the batch-invariant mode (util/invariant.py) swaps every reduction in one place: the
matmuls, the norms and the score get fixed reduction orders; the pointwise pieces (RoPE,
SiLU*up) are the same element by element at any batch size and stay as they are.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import Any, cast

import torch
import torch.nn.functional as F

from ..util import invariant, rope_kernel, row_kernels, silu_kernel, swiglu_kernel

log = logging.getLogger(__name__)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    # Qwen2RMSNorm: normalise in float32, cast back, then scale.
    h = x.float()
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return weight * h.to(x.dtype)


def add_rms_norm(
    x: torch.Tensor, delta: torch.Tensor, weight: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    x = x + delta
    return x, rms_norm(x, weight, eps)


def rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin


def vision_qk_rope(
    qkv: torch.Tensor, heads: int, cos: torch.Tensor, sin: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotated queries and keys, [n, heads, head_dim] each, read straight from the vision
    attention's packed qkv projection [n, 3 * heads * head_dim]. The arithmetic of
    transformers' apply_rotary_pos_emb_vision (float32, cast back): x*cos + rotate_half(x)*sin,
    written per half (x1*c1 - x2*s1, x2*c2 + x1*s2), which is the same sums term for term."""
    n = qkv.shape[0]
    x = qkv.view(n, 3, heads, -1)[:, :2].float()
    half = x.shape[-1] // 2
    cos, sin = cos[:, None, None, :].float(), sin[:, None, None, :].float()
    x1, x2 = x[..., :half], x[..., half:]
    out = torch.cat(
        (x1 * cos[..., :half] - x2 * sin[..., :half], x2 * cos[..., half:] + x1 * sin[..., half:]), dim=-1
    ).to(qkv.dtype)
    return out[:, 0], out[:, 1]


def silu_mul(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    return F.silu(gate) * up


class Kernel:
    """Calls the fused kernel when enabled (and the batch is not small): `fn` compiled, or `fast`,
    a hand-written kernel of the same arithmetic (util/row_kernels.py, util/silu_kernel.py), which
    on the H200 beat torch.compile's: RMSNorm and add + RMSNorm 1.1-2.4x, SiLU*up 1.4x at the LM's
    widths (bench/RESULTS.md, "Hand-written elementwise kernels"). Falls back to eager for good on
    any failure of either, except running out of GPU memory, which reaches the caller.

    `takes(*args)`, where given, says whether the fast kernel handles these arguments (shapes,
    dtypes or layouts it cannot take run eagerly, which is no failure); `eager_below` overrides the
    class's row threshold for a kernel measured on its own; `name` names it in the warning
    (default: fn's name).

    Only the token dimension (dim 0 of every tensor of 2+ dims) is compiled as dynamic: with
    hidden sizes and head counts as constants the kernels index and reduce with fixed sizes,
    which on an H100/H200 made them 1.7-2.4x faster than `dynamic=True` (bench/RESULTS.md, "Elementwise kernels").
    """

    # Below this many rows (tokens: dim 0 of the first argument) the eager ops run instead, except
    # in the batch-invariant mode. A compiled call costs the host more (dynamo's guards, the
    # wrappers, the launcher) than the eager kernels' launches, and a small batch waits on the
    # host: a text pair took 37.5 against 44.8 ms with eager kernels below 2048 rows, 8 titles
    # 39.4 against 47.1; 16 titles (~1,800 rows) were already 2% slower, the GPU's extra passes
    # showing (H200, bench/RESULTS.md "Eager kernels for small batches").
    eager_below = 1024

    def __init__(self, fn: Callable[..., Any], compiled: bool, invariant: bool = False,
                 compiler: Callable[[Callable[..., Any]], Callable[..., Any]] = torch.compile,
                 fast: Callable[..., Any] | None = None, takes: Callable[..., bool] | None = None,
                 eager_below: int | None = None, name: str | None = None):
        self.fn = fn
        self.name = name or fn.__name__
        self._traced = fast is None  # torch.compile's kernel: dimensions marked, size 1 specialised
        self._compiled = fast if fast is not None else compiler(fn) if compiled else None
        self.invariant = invariant
        self.takes = takes
        if eager_below is not None:
            self.eager_below = eager_below

    def __call__(self, *args: Any) -> Any:  # tensors in, the wrapped function's tensor(s) out
        if self._compiled is not None and self._traced and self.invariant and any(
                isinstance(a, torch.Tensor) and a.dim() >= 2 and a.shape[0] == 1 for a in args):
            # torch.compile specialises a dimension of size 1 into a kernel of its own; the
            # batch-invariant mode runs one row as two, so that it meets the kernel every batch uses.
            twice = [torch.cat([a, a]) if isinstance(a, torch.Tensor) and a.dim() >= 2 and a.shape[0] == 1 else a
                     for a in args]
            out = self(*twice)
            return tuple(o[:1] for o in out) if isinstance(out, tuple) else out[:1]
        if self._compiled is not None and not self.invariant and args[0].shape[0] < self.eager_below:
            return self.fn(*args)
        if self._compiled is not None and self.takes is not None and not self.takes(*args):
            return self.fn(*args)
        if self._compiled is not None:
            try:
                if self._traced:
                    for a in args:
                        if isinstance(a, torch.Tensor) and a.dim() >= 2:
                            torch._dynamo.maybe_mark_dynamic(a, 0)
                return self._compiled(*args)
            except torch.OutOfMemoryError:
                # The batch's memory, not the kernel: the scheduler splits the batch, and the
                # eager ops would need more memory, not less.
                raise
            except Exception as exc:  # a missing compiler or a kernel that fails to build must not stop serving
                log.warning("the fused kernel for %s failed (%s); running it eagerly", self.name, exc)
                self._compiled = None
        return self.fn(*args)


class FusedOps:
    """The elementwise pieces of the LM and vision layers, fused on CUDA (hand-written Triton
    kernels; without Triton compiled unless `compile` is False, default: LYCHEE_COMPILE, on unless
    0), eager otherwise; and the layers' matmuls.
    `batch_invariant`: matmuls, norms and the score with fixed reduction orders
    (util/invariant.py), so that a row's result never depends on the rows beside it."""

    def __init__(self, device: torch.device, compile: bool | None = None, batch_invariant: bool = False):
        if compile is None:
            compile = os.environ.get("LYCHEE_COMPILE", "1") != "0"
        enabled = device.type == "cuda" and compile
        self.enabled = enabled
        self.batch_invariant = batch_invariant
        self.rms_norm: Callable[..., torch.Tensor]
        self.add_rms_norm: Callable[..., tuple[torch.Tensor, torch.Tensor]]
        # The norms, SiLU*up and both RoPEs as hand-written Triton kernels wherever Triton runs;
        # compiled (or eager) elsewhere.
        triton_on = (device.type == "cuda" and row_kernels.triton is not None and silu_kernel.triton is not None
                     and rope_kernel.triton is not None)
        self.vision_qk_rope = (Kernel(vision_qk_rope, True, invariant=batch_invariant, fast=rope_kernel.vision_qk_rope,
                                      takes=rope_kernel.vision_supported, eager_below=0)
                               if triton_on else Kernel(vision_qk_rope, enabled, invariant=batch_invariant))
        # Elementwise with eager's roundings, bit for bit eager's result, so batch-invariant as it
        # stands and fit for every size: one launch where eager takes four (in a small batch's
        # CUDA graph too).
        self.rope = (Kernel(rope, True, invariant=batch_invariant, fast=rope_kernel.rope, takes=rope_kernel.supported,
                            eager_below=0)
                     if triton_on else Kernel(rope, enabled, invariant=batch_invariant))
        self.silu_mul: Callable[..., torch.Tensor]
        if batch_invariant:
            # The Triton kernel on CUDA (elementwise, so batch-invariant at any size), rows alone on the CPU.
            self.silu_mul = invariant.silu_mul
        elif triton_on:
            self.silu_mul = Kernel(silu_mul, True, fast=silu_kernel.silu_mul)
        else:
            self.silu_mul = Kernel(silu_mul, enabled)
        if batch_invariant:
            self.rms_norm = invariant.rms_norm
            self.add_rms_norm = invariant.add_rms_norm
        elif triton_on:
            self.rms_norm = Kernel(rms_norm, True, fast=row_kernels.rms_norm)
            self.add_rms_norm = Kernel(add_rms_norm, True, fast=row_kernels.add_rms_norm)
        else:
            self.rms_norm = Kernel(rms_norm, enabled)
            self.add_rms_norm = Kernel(add_rms_norm, enabled)
        # One kernel for gate, up and SiLU*up where tensor descriptors exist (util/swiglu_kernel.py);
        # elementwise in its epilogue and one tile at every size, so the batch-invariant mode
        # runs every row through it.
        swiglu_on = (triton_on and swiglu_kernel.triton is not None
                     and torch.cuda.get_device_capability(device)[0] >= 9)
        self._gate_up_silu = Kernel(self._three_steps, swiglu_on, invariant=batch_invariant,
                                    fast=swiglu_kernel.gate_up_silu if swiglu_on else None,
                                    takes=swiglu_kernel.supported, eager_below=self.swiglu_from,
                                    name="gate/up/SiLU")

    def activation(self, module: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
        """`module(x)` for an elementwise activation; in the batch-invariant mode on the CPU one row
        at a time (`invariant.rowwise`: torch's vector and scalar CPU code round it differently)."""
        if self.batch_invariant:
            return invariant.rowwise(module, x)
        return module(x)

    def linear(self, module: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
        """`module(x)` for an nn.Linear (called through F.linear: no module hooks, less host time)."""
        weight, bias = cast(torch.Tensor, module.weight), cast("torch.Tensor | None", module.bias)
        if self.batch_invariant:
            return invariant.linear(x, weight, bias)
        return F.linear(x, weight, bias)

    # Below this many rows cuBLAS's two GEMMs and the SiLU kernel run instead (outside the
    # batch-invariant mode): at 256 rows of the LM the fused kernel took 1.36x their time, from
    # 1,024 rows 0.97-1.10x (H200, bench/results/nvidia-h200-swiglu.txt).
    swiglu_from = 1024

    def gate_up_silu(self, gate: torch.nn.Module, up: torch.nn.Module, x: torch.Tensor,
                     cublas_first: bool = False) -> torch.Tensor:
        """`silu(gate(x)) * up(x)` for two nn.Linear: one fused kernel on Hopper-class GPUs (the
        same roundings as the three steps; it never writes gate and up out), else the three steps.
        `cublas_first`: outside the batch-invariant mode keep cuBLAS's GEMMs (the LM, where the
        fused kernel measured no faster). The kernel's rule (rows, shapes it takes, a failure
        falling back for good) is `Kernel`'s."""
        wg, wu = cast(torch.Tensor, gate.weight), cast(torch.Tensor, up.weight)
        bg, bu = cast("torch.Tensor | None", gate.bias), cast("torch.Tensor | None", up.bias)
        if cublas_first and not self.batch_invariant:
            return self._three_steps(x, wg, wu, bg, bu)
        return cast(torch.Tensor, self._gate_up_silu(x, wg, wu, bg, bu))

    def _three_steps(self, x: torch.Tensor, wg: torch.Tensor, wu: torch.Tensor,
                     bg: torch.Tensor | None, bu: torch.Tensor | None) -> torch.Tensor:
        return self.silu_mul(self.linear_weight(x, wg, bg), self.linear_weight(x, wu, bu))

    def linear_weight(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        if self.batch_invariant:
            return invariant.linear(x, weight, bias)
        return F.linear(x, weight, bias)

    def score(self, h: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """float32 h[i] . w for each row: z_yes - z_no from the final hidden states."""
        if self.batch_invariant:
            return invariant.row_dot(h, w)
        return h.float() @ w
