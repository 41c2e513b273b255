"""One attention call per vision layer for the Qwen2.5-VL tower, instead of one per window.

Without flash_attention_2, transformers' `Qwen2_5_VLVisionAttention.forward` splits the packed sequence at
`cu_seqlens` and calls SDPA once per chunk: 16 windows per 448x448 image, so 1,600 tiny calls per layer for
100 images. `VisionAttention` computes the same thing, with the layer's own weights, with:

- on CUDA, when every chunk is a window of at most 64 patches (28 of the 32 layers), one Triton kernel that
  also applies the rotary embedding on the way in (window_kernel.py);
- on CUDA, when every chunk has the same length (a standard image's windows, or whole images), one SDPA
  call on a dense [chunks, heads, length, head_dim] view, cuDNN's kernel preferred;
- `torch.nn.attention.varlen.varlen_attn` (flash varlen, fp16/bf16) on CUDA otherwise: one call over all chunks;
- otherwise, or where varlen_attn refuses the inputs (float32, say): chunks grouped by length, one SDPA call per
  distinct length on a [chunks, heads, length, head_dim] batch (windows are mostly of equal length).

Where the vision config asks for flash attention (which already packs), transformers' own forward runs.

Batch-invariant mode (`batch_invariant`): an image's attention must not depend on the images beside
it, so the path must not depend on the batch either. The cuDNN dense path is taken only when every
chunk of the batch has one length, and transformers' flash forward calls the layer's own linear
modules, so both are skipped: the window kernel (one program per window and head) where it
applies, flash varlen (one program per image, head and query block, keys in one order) otherwise,
and grouped SDPA only where varlen refuses the inputs; the projections go through `linear`.
The tower builds one `Plan` per forward and per kind of layer from the bounds it knows on the host, so no
layer reads `cu_seqlens` back from the GPU. All state (the kernel switch, the varlen refusals) lives on the
instance: two engines in one process share nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from itertools import pairwise
from typing import cast

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VLVisionAttention
from transformers.utils.generic import is_flash_attention_requested

from ..lm.fused import vision_qk_rope
from ..util.device_copy import to_device
from . import window_kernel as vision_window_kernel

try:  # torch >= 2.10
    from torch.nn.attention.varlen import varlen_attn
except ImportError:  # pragma: no cover - older torch
    varlen_attn = None

log = logging.getLogger(__name__)

_PREFER_CUDNN = [
    SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH
]


class Plan:
    """What one `cu_seqlens` tensor says, in the forms the attention paths need."""

    __slots__ = ("_groups", "bounds", "cu_int32", "device", "lengths", "max_len", "total")

    def __init__(self, cu_seqlens: torch.Tensor, bounds: list[int] | None = None):
        """`bounds` are cu_seqlens' values when known on the host (else they are read back)."""
        if bounds is None:
            bounds = [int(b) for b in cu_seqlens.tolist()]
        if not bounds or bounds[0] != 0:
            raise ValueError(f"cu_seqlens must start at 0, got {bounds[:1]}")
        self.bounds = bounds
        self.lengths = [b - a for a, b in pairwise(bounds)]
        if any(length < 0 for length in self.lengths):
            raise ValueError("cu_seqlens must be non-decreasing")
        self.total = bounds[-1]
        self.max_len = max(self.lengths, default=0)
        self.device = cu_seqlens.device
        self.cu_int32 = cu_seqlens if cu_seqlens.dtype == torch.int32 else cu_seqlens.to(torch.int32)
        self._groups: list[tuple[int, int, torch.Tensor | None]] | None = None

    def groups(self) -> list[tuple[int, int, torch.Tensor | None]]:
        """(length, number of chunks, token indices or None where the chunks tile the whole sequence)."""
        if self._groups is None:
            starts_by_len: dict[int, list[int]] = {}
            for start, end in pairwise(self.bounds):
                length = end - start
                if length:
                    starts_by_len.setdefault(length, []).append(start)
            if len(starts_by_len) == 1:
                # Every token is in a chunk of the same length: a plain view, no gather.
                ((length, starts),) = starts_by_len.items()
                self._groups = [(length, len(starts), None)]
            else:
                groups = []
                for length, starts in starts_by_len.items():
                    first = to_device(torch.tensor(starts, dtype=torch.long), self.device)
                    index = (first[:, None] + torch.arange(length, device=self.device)).reshape(-1)
                    groups.append((length, len(starts), index))
                self._groups = groups
        return self._groups


def _grouped_sdpa(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, plan: Plan, scale: float, dropout: float
) -> torch.Tensor:
    """Attention within each chunk, [total, heads, head_dim] in and out; one SDPA call per distinct chunk length."""
    total, heads, head_dim = query.shape
    groups = plan.groups()
    out = None
    for length, count, index in groups:
        if index is None:
            q, k, v = (t.view(count, length, heads, head_dim) for t in (query, key, value))
        else:
            q, k, v = (t.index_select(0, index).view(count, length, heads, head_dim) for t in (query, key, value))
        # Looked up at call time (not imported by name) so that wrappers of the torch function see the calls.
        o = torch.nn.functional.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), dropout_p=dropout, scale=scale, is_causal=False
        )
        o = o.transpose(1, 2).reshape(count * length, heads, head_dim)
        if index is None:
            return o
        if out is None:
            out = query.new_empty(total, heads, head_dim)
        out.index_copy_(0, index, o)
    if out is None:  # no tokens at all
        out = query.new_empty(total, heads, head_dim)
    return out


class VisionAttention:
    """The vision layers' attention with their own weights (see the module doc). `window_kernel`
    turns the fused Triton kernel on where it applies; it switches itself off for good, on this
    instance, if it ever fails to compile or run (running out of GPU memory is not such a failure:
    it reaches the caller, whose batch is split)."""

    def __init__(self, window_kernel: bool = True, qk_rope: Callable = vision_qk_rope,
                 linear: Callable | None = None, batch_invariant: bool = False):
        self.window_kernel = window_kernel
        self.batch_invariant = batch_invariant
        # (module, x) -> module(x) for the layer's nn.Linear projections (FusedOps.linear).
        self.linear = linear if linear is not None else (lambda module, x: module(x))
        # (qkv, heads, cos, sin) -> (q, k): transformers' rotary arithmetic (fused.vision_qk_rope).
        self.qk_rope = qk_rope
        self._varlen_refused: set[tuple] = set()

    def __call__(
        self, attn: Qwen2_5_VLVisionAttention, hidden_states: torch.Tensor, plan: Plan, cos: torch.Tensor,
        sin: torch.Tensor,
    ) -> torch.Tensor:
        """Attention within each chunk of `plan` for one layer `attn`; [seq, hidden] in and out."""
        if is_flash_attention_requested(attn.config) and not self.batch_invariant:  # flash already packs
            return Qwen2_5_VLVisionAttention.forward(
                attn, hidden_states, plan.cu_int32, position_embeddings=(cos, sin), max_seqlen=plan.max_len
            )
        seq_length = hidden_states.shape[0]
        if plan.total != seq_length:
            raise ValueError(f"cu_seqlens covers {plan.total} tokens, hidden_states has {seq_length}")
        qkv = self.linear(attn.qkv, hidden_states)
        dropout = attn.attention_dropout if attn.training else 0.0
        if dropout == 0.0:
            windowed = self._window_kernel(qkv, cos, sin, plan, attn.num_heads, attn.scaling)
            if windowed is not None:
                return self.linear(attn.proj, windowed)

        value_states = qkv.view(seq_length, 3, attn.num_heads, -1)[:, 2]
        query_states, key_states = self.qk_rope(qkv, attn.num_heads, cos, sin)
        # [seq, heads, head_dim] each from here on.

        attn_output = None
        if query_states.is_cuda and dropout == 0.0:
            groups = plan.groups()
            if len(groups) == 1 and groups[0][2] is None and not self.batch_invariant:
                # Chunks of one length tile the sequence (windows of a standard image, whole images in the
                # full-attention layers): a dense batch, where cuDNN's kernel beat flash varlen on an H100
                # (bench/RESULTS.md, "Vision attention: cuDNN dense vs flash varlen").
                with sdpa_kernel(_PREFER_CUDNN, set_priority=True):
                    attn_output = _grouped_sdpa(query_states, key_states, value_states, plan, attn.scaling, dropout)
            elif varlen_attn is not None:
                attn_output = self._try_varlen(
                    query_states, key_states, value_states, plan.cu_int32, plan.max_len, attn.scaling
                )
        if attn_output is None:
            attn_output = _grouped_sdpa(query_states, key_states, value_states, plan, attn.scaling, dropout)

        attn_output = attn_output.reshape(seq_length, -1).contiguous()
        return self.linear(attn.proj, attn_output)

    def _try_varlen(
        self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, cu_seqlens: torch.Tensor, max_len: int,
        scale: float,
    ) -> torch.Tensor | None:
        refusal_key = (query.device.type, query.device.index, query.dtype, query.shape[-1])
        if refusal_key in self._varlen_refused:
            return None
        try:
            # None only where the import failed, and then use_varlen is off; the output alone is returned
            return cast(torch.Tensor, varlen_attn(  # pyright: ignore[reportOptionalCall]
                query, key, value, cu_seqlens, cu_seqlens, max_len, max_len, scale=scale))
        except torch.OutOfMemoryError:  # a RuntimeError, but the batch's memory, not a refusal
            raise
        except (RuntimeError, ValueError, TypeError, NotImplementedError) as exc:
            self._varlen_refused.add(refusal_key)
            log.info("varlen_attn refused %s; using grouped sdpa for it: %s", refusal_key, exc)
            return None

    def _window_kernel(
        self, qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, plan: Plan, heads: int, scale: float
    ) -> torch.Tensor | None:
        """The fused rotary + window attention, [seq, heads * head_dim], where it applies; else None."""
        if not self.window_kernel or not vision_window_kernel.supported(qkv, heads, plan.max_len):
            return None
        try:
            return vision_window_kernel.window_attention_rope(
                qkv, cos, sin, plan.cu_int32, len(plan.lengths), heads, scale
            )
        except torch.OutOfMemoryError:  # the batch's memory, not the kernel: the caller splits the batch
            raise
        except Exception as exc:  # a missing compiler must not stop serving
            self.window_kernel = False
            log.warning("the fused window attention kernel failed (%s); using SDPA for the vision windows", exc)
            return None
