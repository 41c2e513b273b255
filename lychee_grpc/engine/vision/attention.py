"""One attention call per vision layer for the Qwen2.5-VL tower, instead of one per window.

Without flash_attention_2, transformers' `Qwen2_5_VLVisionAttention.forward` splits the packed sequence at
`cu_seqlens` and calls SDPA once per chunk: 16 windows per 448x448 image, so 1,600 tiny calls per layer for
100 images. `packed_vision_attention_forward` computes the same thing with:

- on CUDA, when every chunk is a window of at most 64 patches (28 of the 32 layers), one Triton kernel that
  also applies the rotary embedding on the way in (vision_window_kernel.py);
- on CUDA, when every chunk has the same length (a standard image's windows, or whole images), one SDPA
  call on a dense [chunks, heads, length, head_dim] view, cuDNN's kernel preferred;
- `torch.nn.attention.varlen.varlen_attn` (flash varlen, fp16/bf16) on CUDA otherwise: one call over all chunks;
- otherwise, or where varlen_attn refuses the inputs (float32, say): chunks grouped by length, one SDPA call per
  distinct length on a [chunks, heads, length, head_dim] batch (windows are mostly of equal length).

The index tensors for a `cu_seqlens` are built once and cached on the tensor's identity: the tower passes the same
object to its 28 window layers and another to its 4 full-attention layers. An entry lives as long as its
`cu_seqlens` tensor does (a weak reference drops it), so a later forward can never see a stale plan.
"""

from __future__ import annotations

import logging
import os
import threading
import types
import weakref
from itertools import pairwise

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import (
    Qwen2_5_VLVisionAttention,
    apply_rotary_pos_emb_vision,
)
from transformers.utils.generic import is_flash_attention_requested

from ..util.device_copy import to_device
from . import window_kernel as vision_window_kernel

try:  # torch >= 2.10
    from torch.nn.attention.varlen import varlen_attn
except ImportError:  # pragma: no cover - older torch
    varlen_attn = None

log = logging.getLogger(__name__)

_MAX_PLANS = 64
_PREFER_CUDNN = [
    SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH
]


class _Plan:
    """What one `cu_seqlens` tensor says, in the forms the two attention paths need."""

    __slots__ = ("_groups", "bounds", "cu_int32", "device", "lengths", "max_len", "total")

    def __init__(self, cu_seqlens: torch.Tensor, device: torch.device, bounds: list[int] | None = None):
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
        self.device = device
        # Kept only when it is a new tensor: a reference to cu_seqlens itself would keep it (and this plan) alive.
        if cu_seqlens.device == device and cu_seqlens.dtype == torch.int32:
            self.cu_int32 = None
        else:
            self.cu_int32 = cu_seqlens.to(device=device, dtype=torch.int32)
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


_plans: dict[int, tuple[weakref.ref, _Plan]] = {}
_plans_lock = threading.RLock()  # re-entrant: a weakref callback can fire inside the lock (GC)
_varlen_refused: set[tuple] = set()


def _forget(key: int, ref: weakref.ref) -> None:
    with _plans_lock:
        entry = _plans.get(key)
        if entry is not None and entry[0] is ref:
            del _plans[key]


def register_plan(cu_seqlens: torch.Tensor, bounds: list[int]) -> None:
    """Plans for `cu_seqlens` from its values known on the host, so no layer reads them back."""
    _plan_for(cu_seqlens, cu_seqlens.device, bounds)


def _plan_for(cu_seqlens: torch.Tensor, device: torch.device, bounds: list[int] | None = None) -> _Plan:
    key = id(cu_seqlens)
    with _plans_lock:
        entry = _plans.get(key)
    if entry is not None and entry[0]() is cu_seqlens and entry[1].device == device:
        return entry[1]
    plan = _Plan(cu_seqlens, device, bounds)
    ref = weakref.ref(cu_seqlens, lambda r, key=key: _forget(key, r))
    with _plans_lock:
        _plans.pop(key, None)
        _plans[key] = (ref, plan)
        while len(_plans) > _MAX_PLANS:
            del _plans[next(iter(_plans))]
    return plan


def _grouped_sdpa(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, plan: _Plan, scale: float, dropout: float
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


def _try_varlen(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    cu_seqlens: torch.Tensor,
    max_len: int,
    scale: float,
) -> torch.Tensor | None:
    refusal_key = (query.device.type, query.device.index, query.dtype, query.shape[-1])
    if refusal_key in _varlen_refused:
        return None
    try:
        return varlen_attn(query, key, value, cu_seqlens, cu_seqlens, max_len, max_len, scale=scale)
    except (RuntimeError, ValueError, TypeError, NotImplementedError) as exc:
        _varlen_refused.add(refusal_key)
        log.info("varlen_attn refused %s; using grouped sdpa for it: %s", refusal_key, exc)
        return None


def packed_vision_attention_forward(
    self: Qwen2_5_VLVisionAttention,
    hidden_states: torch.Tensor,
    cu_seqlens: torch.Tensor,
    position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None,
    max_seqlen: int | None = None,
    **kwargs,
) -> torch.Tensor:
    """`Qwen2_5_VLVisionAttention.forward` with all `cu_seqlens` chunks in one attention call (see module doc)."""
    if is_flash_attention_requested(self.config):  # flash already packs: keep transformers' own path
        return Qwen2_5_VLVisionAttention.forward(
            self, hidden_states, cu_seqlens, position_embeddings=position_embeddings, max_seqlen=max_seqlen, **kwargs
        )

    seq_length = hidden_states.shape[0]
    qkv = self.qkv(hidden_states)
    cos, sin = position_embeddings
    dropout = self.attention_dropout if self.training else 0.0
    plan = _plan_for(cu_seqlens, qkv.device)
    if plan.total != seq_length:
        raise ValueError(f"cu_seqlens covers {plan.total} tokens, hidden_states has {seq_length}")
    if dropout == 0.0:
        windowed = _window_kernel(qkv, cos, sin, cu_seqlens, plan, self.num_heads, self.scaling)
        if windowed is not None:
            return self.proj(windowed)

    value_states = qkv.view(seq_length, 3, self.num_heads, -1)[:, 2]
    query_states, key_states = _qk_rope(qkv, self.num_heads, cos, sin)
    # [seq, heads, head_dim] each from here on.

    attn_output = None
    if query_states.is_cuda and dropout == 0.0:
        groups = plan.groups()
        if len(groups) == 1 and groups[0][2] is None:
            # Chunks of one length tile the sequence (windows of a standard image, whole images in the
            # full-attention layers): a dense batch, where cuDNN's kernel beat flash varlen on an H100
            # (0.54 vs 0.68 ms per window layer, 1.30 vs 2.10 ms per full layer; bench/attention.py).
            with sdpa_kernel(_PREFER_CUDNN, set_priority=True):
                attn_output = _grouped_sdpa(query_states, key_states, value_states, plan, self.scaling, dropout)
        elif varlen_attn is not None:
            cu = plan.cu_int32 if plan.cu_int32 is not None else cu_seqlens
            max_len = int(max_seqlen) if max_seqlen is not None else plan.max_len
            attn_output = _try_varlen(query_states, key_states, value_states, cu, max_len, self.scaling)
    if attn_output is None:
        attn_output = _grouped_sdpa(query_states, key_states, value_states, plan, self.scaling, dropout)

    attn_output = attn_output.reshape(seq_length, -1).contiguous()
    return self.proj(attn_output)


# Off with LYCHEE_WINDOW_KERNEL=0; switched off for good if it ever fails to compile or run here.
window_kernel_enabled = os.environ.get("LYCHEE_WINDOW_KERNEL", "1") != "0"


def _window_kernel(
    qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, cu_seqlens: torch.Tensor, plan: _Plan, heads: int,
    scale: float,
) -> torch.Tensor | None:
    """The fused rotary + window attention, [seq, heads * head_dim], where it applies; else None."""
    global window_kernel_enabled
    if not window_kernel_enabled or not vision_window_kernel.supported(qkv, heads, plan.max_len):
        return None
    cu = plan.cu_int32 if plan.cu_int32 is not None else cu_seqlens
    try:
        return vision_window_kernel.window_attention_rope(qkv, cos, sin, cu, len(plan.lengths), heads, scale)
    except Exception as exc:  # a missing compiler must not stop serving
        window_kernel_enabled = False
        log.warning("the fused window attention kernel failed (%s); using SDPA for the vision windows", exc)
        return None


def _transformers_qk_rope(
    qkv: torch.Tensor, heads: int, cos: torch.Tensor, sin: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    q, k, _ = qkv.view(qkv.shape[0], 3, heads, -1).unbind(1)
    return apply_rotary_pos_emb_vision(q, k, cos, sin)


_qk_rope = _transformers_qk_rope


def set_rotary(fn) -> None:
    """Swaps the rotary function, (qkv, heads, cos, sin) -> (q, k); the fused one computes the
    same thing in one kernel."""
    global _qk_rope
    _qk_rope = fn


def install_packed_vision_attention(model) -> str:
    """Route every vision attention of a Qwen2.5-VL model (or of its tower) through the packed forward.

    Left alone where the vision config asks for flash attention, which already packs. Returns what is used.
    """
    visual = model
    for path in (("model", "visual"), ("visual",)):
        found = model
        for name in path:
            found = getattr(found, name, None)
        if found is not None:
            visual = found
            break
    impl = getattr(visual.config, "_attn_implementation", None)
    if is_flash_attention_requested(visual.config):
        return f"{impl} (already packed; not patched)"
    patched = 0
    for module in visual.modules():
        if isinstance(module, Qwen2_5_VLVisionAttention):
            module.forward = types.MethodType(packed_vision_attention_forward, module)
            patched += 1
    if not patched:
        return "no Qwen2.5-VL vision attention found; not patched"
    if varlen_attn is not None:
        return f"varlen_attn on cuda, grouped sdpa elsewhere ({patched} layers)"
    return f"packed sdpa (grouped by window length, {patched} layers)"
