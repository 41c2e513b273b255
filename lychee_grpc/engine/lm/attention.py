"""The language model's attention over packed sequences: which rows attend to which (a plan,
built on the host, then copied to the device with the batch's other inputs), and the call itself:
on CUDA in half precision one call of the Triton kernel of attention_kernel.py (`kernel=True`) or
of `varlen_attn` (flash), else one padded SDPA call with an explicit mask (grouped query heads
folded into the query rows, so keys/values are never repeated). Each query attends causally,
aligned bottom-right, to its sequence's context runs.

Batch-invariant mode: a sequence's attention must not depend on the sequences beside it. Flash
attention's varlen kernel gives each (sequence, head, block of 128 query rows) to one program that
walks the sequence's keys in one fixed order, except when every sequence has one query row: then
it may split the keys over several programs, by a heuristic that counts the batch's sequences
(`seqlenq_ngroups_swapped` in PyTorch's flash_api.cpp), which the last layer would meet. The plan
then declares at least two query rows (an upper bound the kernel accepts), so the keys are never
split. The padded SDPA path's shapes follow the longest sequence of the batch; in this mode it runs
sequence by sequence instead, each call shaped by its own sequence only. The Triton kernel is
batch-invariant as it is (attention_kernel.py); its tiles are chosen by the plan's role (the last
layer's or the others'), never by the batch."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import cast

import numpy as np
import torch
import torch.nn.functional as F

from . import attention_kernel

log = logging.getLogger(__name__)

try:  # torch >= 2.10 on CUDA
    from torch.nn.attention.varlen import varlen_attn
except ImportError:  # pragma: no cover - older torch
    varlen_attn = None


@dataclass
class HostPlan:
    """An attention plan's host side (see host_plan)."""

    q_starts: list[int]
    counts: np.ndarray  # query rows per sequence
    klens: np.ndarray  # key rows per sequence
    q_rows: int
    kv_rows: int
    flat: torch.Tensor  # rows of the key/value source, sequence after sequence
    cu_q: torch.Tensor
    cu_k: torch.Tensor
    flat_rows: np.ndarray | None = None  # `flat` as NumPy, for the padded path's groups


@dataclass
class PaddedGroup:
    """Sequences of similar query length, attended in one padded SDPA call."""

    q_index: torch.Tensor  # [B, Lq] rows of the query tensor (its last row is padding)
    kv_index: torch.Tensor  # [B, S] rows of the key/value source (its last row is padding)
    mask: torch.Tensor  # [B, 1, rep*Lq, S]
    valid: torch.Tensor  # real rows of the flattened [B*Lq] output ...
    rows: torch.Tensor | None  # ... and where they go in the packed output (None: in order, all of it)


@dataclass
class Plan:
    """Which rows attend to which, for one attention call (all layers but the last, or the last)."""

    # Varlen form.
    kv_rows: torch.Tensor  # flat rows of the key/value source, sequence after sequence
    cu_q: torch.Tensor
    cu_k: torch.Tensor
    max_q: int
    max_k: int
    last: bool = False  # the last layer's plan: one query row per sequence (the Triton kernel's tiles)
    # Padded SDPA form (built only when varlen is not in use).
    groups: list[PaddedGroup] | None = None
    host: HostPlan | None = None  # kept for the sequence-by-sequence path (batch-invariant, no varlen)


# Sequences per padded SDPA call. One call over a whole batch of ~100 sequences built score
# blocks of ~14 MB (past the cache) padded to the longest sequence, and took 2.2x as long as
# calls over 16 sequences of similar length (bench/RESULTS.md, "The per-call cost").
PADDED_GROUP = 16
# The Triton kernel's programs each walk their sequence's keys from the first; past a few thousand
# query rows flash attention's larger tiles win: on the H200 (bench.kernels.lm_attention) the kernel
# took 0.917 against 1.122 ms per layer for 25 documents of ~1,070 rows, 3.292 against 3.050 for 8
# of ~4,000. Outside the batch-invariant mode (whose kernel must not depend on the batch), a batch
# with a sequence longer than this attends with flash.
KERNEL_LONGEST = 2048
ONE_CALL_SCORES = 1 << 18  # a padded score block this small stays one call


def padded_groups(counts: np.ndarray, klens: np.ndarray, size: int = PADDED_GROUP) -> list[np.ndarray]:
    """The sequences in groups of `size`, by query rows then key rows: each group is padded to
    its own longest sequence only. Members of a group in ascending order."""
    order = np.lexsort((klens, counts))
    return [np.sort(order[i : i + size]) for i in range(0, order.size, size)]


def host_plan(
    queries: list[tuple[int, int]], keys: list[list[tuple[int, int]]], q_rows: int, kv_rows: int
) -> HostPlan:
    """`queries[i]` = (first query row, count): the last `count` tokens of sequence i;
    `keys[i]` = runs (first row, count) of the key/value source, its context first.
    `q_rows` / `kv_rows` are the padding rows of the query and key/value tensors."""
    counts = np.fromiter((n for _, n in queries), dtype=np.int64, count=len(queries))
    run_starts = np.array([r0 for runs in keys for r0, _ in runs], dtype=np.int64)
    run_lens = np.array([n for runs in keys for _, n in runs], dtype=np.int64)
    klens = np.array([sum(n for _, n in runs) for runs in keys], dtype=np.int64)
    # Every run's rows, run after run, without a Python loop over rows (NumPy: ~100x fewer calls).
    flat = np.repeat(run_starts - (np.cumsum(run_lens) - run_lens), run_lens) + np.arange(run_lens.sum())
    return HostPlan(
        q_starts=[q0 for q0, _ in queries], counts=counts, klens=klens, q_rows=q_rows, kv_rows=kv_rows,
        flat=torch.from_numpy(flat), flat_rows=flat,
        cu_q=torch.from_numpy(np.concatenate(([0], np.cumsum(counts))).astype(np.int32)),
        cu_k=torch.from_numpy(np.concatenate(([0], np.cumsum(klens))).astype(np.int32)),
    )


class PackedAttention:
    def __init__(self, num_heads: int, num_kv_heads: int, head_dim: int, device: torch.device, dtype: torch.dtype,
                 batch_invariant: bool = False, kernel: bool = False):
        """`kernel`: the Triton kernel of attention_kernel.py where it runs (CUDA, half
        precision), in place of flash attention's varlen kernel."""
        self.batch_invariant = batch_invariant
        self.num_heads = num_heads
        self.num_kv_heads = num_kv_heads
        self.head_dim = head_dim
        self.rep = num_heads // num_kv_heads
        self.scale = head_dim**-0.5
        self.device = device
        self.dtype = dtype
        self._probe_varlen()
        self.use_kernel = False  # the probe's reference runs the other path
        self.use_kernel = kernel and self._probe_kernel()

    @property
    def splits_exactly(self) -> bool:
        """Whether a sequence run as a head and a tail that attends to it (engine/heads.py) gets
        the bits it gets whole, as the batch-invariant mode promises. The Triton kernel and flash
        attention walk a query row's keys block by block from the sequence's first key, wherever
        its query rows start (bench.invariance: 50/50 pairs on the H200, either kernel); the
        padded path's per-sequence SDPA call is shaped by its query rows, and its matmuls may
        round a row by that shape."""
        return self.use_kernel or self.use_varlen or not self.batch_invariant

    def plan(self, host: HostPlan, kv_rows: torch.Tensor, cu_q: torch.Tensor, cu_k: torch.Tensor,
             last: bool = False) -> Plan:
        """The attention plan on the device (`last`: the last layer's). The padded path's tensors
        are built only when used (its mask is large)."""
        lq, S = int(host.counts.max()), int(host.klens.max())
        at = Plan(kv_rows=kv_rows, cu_q=cu_q, cu_k=cu_k, max_q=lq, max_k=S, last=last)
        if self.use_kernel:
            return at
        if self.use_varlen:
            if self.batch_invariant:
                at.max_q = max(2, lq)  # never the split-keys path (see the module doc)
            return at
        if self.batch_invariant:
            at.host = host
            return at
        if host.counts.size * self.rep * lq * S <= ONE_CALL_SCORES:  # small: one call (the last layer's)
            groups = [np.arange(host.counts.size)]
        else:
            groups = padded_groups(host.counts, host.klens)
        at.groups = [self._padded(host, members, len(groups) == 1) for members in groups]
        return at

    def _padded(self, host: HostPlan, members: np.ndarray, whole: bool) -> PaddedGroup:
        """The padded call's index tensors and mask for the sequences `members` of `host`, built
        in NumPy (a few microseconds an array, where torch's small-tensor calls cost more)."""
        counts, klens = host.counts[members], host.klens[members]
        B, lq, S = members.size, int(counts.max()), int(klens.max())
        flat = host.flat_rows if host.flat_rows is not None else host.flat.numpy()
        q_cols, k_cols = np.arange(lq), np.arange(S)
        q_valid = q_cols[None, :] < counts[:, None]
        q_index = np.where(q_valid, np.asarray(host.q_starts, dtype=np.int64)[members][:, None] + q_cols,
                           host.q_rows)
        k_valid = k_cols[None, :] < klens[:, None]
        k_first = (np.cumsum(host.klens) - host.klens)[members]
        kv_index = np.where(k_valid, flat[np.minimum(k_first[:, None] + k_cols, flat.size - 1)], host.kv_rows)
        # The queries are each sequence's last n tokens: query j sees keys 0 .. klen - n + j
        # (causal, aligned bottom-right as flash attention's varlen kernel does).
        visible = (klens - counts + 1)[:, None] + q_cols[None, :]
        allowed = k_cols[None, None, :] < visible[:, :, None]  # [B, Lq, S]
        mask = np.repeat(allowed[:, None], self.rep, axis=1).reshape(B, 1, self.rep * lq, S)
        valid = np.flatnonzero(q_valid)
        dev = self.device
        return PaddedGroup(
            q_index=torch.from_numpy(q_index).to(dev), kv_index=torch.from_numpy(kv_index).to(dev),
            mask=torch.from_numpy(mask).to(dev), valid=torch.from_numpy(valid).to(dev),
            rows=None if whole else torch.from_numpy(q_index.ravel()[valid]).to(dev))

    def __call__(self, q: torch.Tensor, k_src: torch.Tensor, v_src: torch.Tensor, at: Plan) -> torch.Tensor:
        """q: [rows, H, D] packed in sequence order; k_src/v_src: [rows, Hkv, D], padding row last."""
        if self.use_kernel and (at.max_q <= KERNEL_LONGEST or self.batch_invariant or not self.use_varlen):
            tiles = attention_kernel.LAST_TILES if at.last else attention_kernel.FULL_TILES
            return attention_kernel.packed_attention(q, k_src, v_src, at.kv_rows, at.cu_q, at.cu_k, at.max_q,
                                                     self.scale, tiles)
        if self.use_varlen:
            k, v = k_src[at.kv_rows], v_src[at.kv_rows]
            if self._varlen_expand_kv:
                k, v = k.repeat_interleave(self.rep, dim=1), v.repeat_interleave(self.rep, dim=1)
            # use_varlen implies it imported; without return_aux it returns the output alone
            out = cast(torch.Tensor, varlen_attn(  # pyright: ignore[reportOptionalCall]
                q, k, v, at.cu_q, at.cu_k, at.max_q, at.max_k, scale=self.scale, window_size=(-1, 0)))
            return out.reshape(q.shape[0], self.num_heads * self.head_dim)
        if at.host is not None:
            return self._one_by_one(q, k_src, v_src, at)
        assert at.groups is not None
        q_padded = torch.cat([q, q.new_zeros(1, *q.shape[1:])])
        if len(at.groups) == 1:
            return self._padded_call(q_padded, k_src, v_src, at.groups[0])
        out = q.new_empty(q.shape[0], self.num_heads * self.head_dim)
        for group in at.groups:
            out[group.rows] = self._padded_call(q_padded, k_src, v_src, group)
        return out

    def _padded_call(self, q_padded: torch.Tensor, k_src: torch.Tensor, v_src: torch.Tensor,
                     group: PaddedGroup) -> torch.Tensor:
        B, lq = group.q_index.shape
        q_pad = q_padded[group.q_index]  # [B, Lq, H, D]
        q_pad = q_pad.view(B, lq, self.num_kv_heads, self.rep, self.head_dim)
        q_pad = q_pad.permute(0, 2, 3, 1, 4).reshape(B, self.num_kv_heads, self.rep * lq, self.head_dim)
        k = k_src[group.kv_index].transpose(1, 2)  # [B, Hkv, S, D]
        v = v_src[group.kv_index].transpose(1, 2)
        out = F.scaled_dot_product_attention(q_pad, k, v, attn_mask=group.mask, scale=self.scale)
        out = out.view(B, self.num_kv_heads, self.rep, lq, self.head_dim).permute(0, 3, 1, 2, 4)
        return out.reshape(B * lq, self.num_heads * self.head_dim)[group.valid]

    def _one_by_one(self, q: torch.Tensor, k_src: torch.Tensor, v_src: torch.Tensor, at: Plan) -> torch.Tensor:
        """One SDPA call per sequence, shaped by that sequence alone (batch-invariant, no varlen)."""
        host = at.host
        assert host is not None  # the caller's condition
        out = q.new_empty(q.shape[0], self.num_heads * self.head_dim)
        cu_k = host.cu_k.tolist()
        for i, (q0, n) in enumerate(zip(host.q_starts, host.counts.tolist())):
            if n == 0:
                continue
            rows = at.kv_rows[cu_k[i] : cu_k[i + 1]]
            s = cu_k[i + 1] - cu_k[i]
            qi = q[q0 : q0 + n].view(n, self.num_kv_heads, self.rep, self.head_dim)
            qi = qi.permute(1, 2, 0, 3).reshape(self.num_kv_heads, self.rep * n, self.head_dim)
            k = k_src.index_select(0, rows).transpose(0, 1)  # [Hkv, S, D]
            v = v_src.index_select(0, rows).transpose(0, 1)
            visible = torch.arange(s - n + 1, s + 1, device=q.device).repeat(self.rep)  # keys seen per query row
            mask = torch.arange(s, device=q.device).unsqueeze(0) < visible.unsqueeze(1)
            o = F.scaled_dot_product_attention(qi, k, v, attn_mask=mask, scale=self.scale)
            out[q0 : q0 + n] = o.view(self.num_kv_heads, self.rep, n, self.head_dim).permute(2, 0, 1, 3).reshape(
                n, -1)
        return out

    def _probe_varlen(self) -> None:
        """Uses varlen_attn when it runs here, and learns whether it takes fewer KV heads."""
        self.use_varlen = False
        self._varlen_expand_kv = False
        if varlen_attn is None or self.device.type != "cuda" or self.dtype not in (torch.bfloat16, torch.float16):
            return
        q = torch.randn(5, self.num_heads, self.head_dim, device=self.device, dtype=self.dtype)
        kv = torch.randn(8, self.num_kv_heads, self.head_dim, device=self.device, dtype=self.dtype)
        cu_q = torch.tensor([0, 2, 5], device=self.device, dtype=torch.int32)
        cu_k = torch.tensor([0, 3, 8], device=self.device, dtype=torch.int32)
        for expand in (False, True):
            k = kv.repeat_interleave(self.rep, dim=1) if expand else kv
            try:
                varlen_attn(q, k, k, cu_q, cu_k, 3, 5, scale=self.scale, window_size=(-1, 0))
            except Exception as exc:  # any refusal means: not this way
                log.info("varlen_attn %s KV heads: %s", "repeated" if expand else "grouped", exc)
                continue
            self.use_varlen, self._varlen_expand_kv = True, expand
            return

    def _probe_kernel(self) -> bool:
        """Whether the Triton kernel builds and runs here, and agrees with flash attention (or the
        padded path) on a small plan; any refusal or disagreement keeps the other path."""
        if self.device.type != "cuda" or self.dtype not in (torch.bfloat16, torch.float16):
            return False
        q = torch.randn(7, self.num_heads, self.head_dim, device=self.device, dtype=self.dtype)
        if not attention_kernel.supported(q, self.num_heads, self.num_kv_heads, self.head_dim):
            return False
        kv = torch.randn(9, self.num_kv_heads, self.head_dim, device=self.device, dtype=self.dtype)  # padding last
        host = host_plan([(0, 3), (3, 4)], [[(0, 3)], [(0, 3), (3, 5)]], 7, 8)
        plan = self.plan(host, host.flat.to(self.device), host.cu_q.to(self.device), host.cu_k.to(self.device))
        try:
            want = self(q, kv, kv, plan).float()
            got = attention_kernel.packed_attention(q, kv, kv, plan.kv_rows, plan.cu_q, plan.cu_k, plan.max_q,
                                                    self.scale).float()
        except Exception as exc:  # any refusal means: not this way
            log.warning("the Triton attention kernel does not run here (%s); flash attention instead", exc)
            return False
        if not torch.allclose(got, want, atol=2e-2, rtol=2e-2):
            log.warning("the Triton attention kernel disagrees with flash attention here (max %.3g); flash instead",
                        (got - want).abs().max().item())
            return False
        return True
