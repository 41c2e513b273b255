"""Elementwise pieces of a decoder layer, written once with the same arithmetic as transformers'
Qwen2 modules, and compiled into fused kernels on CUDA (torch.compile, dynamic shapes). On the
CPU, or if compilation fails, they run eagerly: same results, more kernels.

Between two GEMMs a layer otherwise launches ~20 small kernels (RMSNorm in float32, RoPE,
SiLU*up, residual adds); on an H100 those took about a third of a 100-document rerank.
"""

from __future__ import annotations

import logging
import os
import types
from collections.abc import Callable

import torch
import torch.nn.functional as F

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


def vision_rope(
    q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    # transformers' apply_rotary_pos_emb_vision: rotate in float32, cast back.
    cos, sin = cos.unsqueeze(-2).float(), sin.unsqueeze(-2).float()
    return rope(q.float(), cos, sin).to(q.dtype), rope(k.float(), cos, sin).to(k.dtype)


def silu_mul(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    return F.silu(gate) * up


class Kernel:
    """Calls the compiled function when enabled; falls back to eager for good on any failure."""

    def __init__(self, fn: Callable, compiled: bool):
        self.fn = fn
        self._compiled = torch.compile(fn, dynamic=True) if compiled else None

    def __call__(self, *args):
        if self._compiled is not None:
            try:
                return self._compiled(*args)
            except Exception as exc:  # a missing compiler must not stop serving
                log.warning("torch.compile failed for %s (%s); running it eagerly", self.fn.__name__, exc)
                self._compiled = None
        return self.fn(*args)


class FusedOps:
    def __init__(self, device: torch.device):
        enabled = device.type == "cuda" and os.environ.get("LYCHEE_COMPILE", "1") != "0"
        self.enabled = enabled
        self.rms_norm = Kernel(rms_norm, enabled)
        self.add_rms_norm = Kernel(add_rms_norm, enabled)
        self.rope = Kernel(rope, enabled)
        self.silu_mul = Kernel(silu_mul, enabled)
        self.vision_rope = Kernel(vision_rope, enabled)

    def install_vision(self, visual) -> bool:
        """Routes the vision blocks' norms, SiLU*up and rotary through the fused kernels."""
        if not self.enabled:
            return False
        from . import vision_attention

        vision_attention.set_rotary(self.vision_rope)
        for block in visual.blocks:
            block.forward = types.MethodType(_fused_vision_block_forward(self), block)
        return True


def _fused_vision_block_forward(ops: FusedOps):
    # Qwen2_5_VLVisionBlock.forward with the elementwise work fused.
    def forward(self, hidden_states, cu_seqlens, position_embeddings=None, **kwargs):
        h = ops.rms_norm(hidden_states, self.norm1.weight, self.norm1.variance_epsilon)
        hidden_states = hidden_states + self.attn(
            h, cu_seqlens=cu_seqlens, position_embeddings=position_embeddings, **kwargs
        )
        h = ops.rms_norm(hidden_states, self.norm2.weight, self.norm2.variance_epsilon)
        mlp = self.mlp
        return hidden_states + mlp.down_proj(ops.silu_mul(mlp.gate_proj(h), mlp.up_proj(h)))

    return forward
