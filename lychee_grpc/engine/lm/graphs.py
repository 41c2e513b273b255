"""CUDA graphs of the language model for small batches: one pair, or a few documents.

A batch of up to `SEQUENCE_BUCKETS[-1] - 1` packed sequences and `TOKEN_BUCKETS[-1]` tokens, with
no stored prefix (a request's first batch: its prefix computed inline), is padded up to a bucket
and replayed from a graph captured at start-up (`Executor.capture_graphs`). The padding is one
extra sequence of throwaway rows that attend only to themselves, and empty sequences: the real
sequences' rows, plans and keys are those of the eager path, so scores equal it (bitwise in the
batch-invariant mode; tested on the GPU by bench/invariance.py).

What stays outside the graph, per call: the embeddings (image rows scattered in), the rotary
tables, the padded plan built on the host, one staged copy to the device, and the copies into the
graph's static inputs. Keys/values a request keeps (its prefix) are copied out of the graph's
per-layer buffers after the replay.
"""

from __future__ import annotations

import bisect
import logging
from typing import TYPE_CHECKING

import numpy as np
import torch

from ..util.graphs import Captured, GraphPool
from .attention import HostPlan, Plan, host_plan

if TYPE_CHECKING:
    from .executor import Executor, Layout

log = logging.getLogger(__name__)

# Padded token counts, and sequence counts (a pair is its prefix, its document and the padding).
TOKEN_BUCKETS = (64, 128, 192, 256, 384, 512, 768, 1024)
SEQUENCE_BUCKETS = (3, 9)


class LMGraphs:
    """The captured small-batch forwards of one executor, by (tokens, sequences) bucket."""

    def __init__(self, executor: Executor, pool: GraphPool, tokens: tuple[int, ...] = TOKEN_BUCKETS,
                 sequences: tuple[int, ...] = SEQUENCE_BUCKETS):
        self.executor = executor
        self.pool = pool
        self.tokens = tuple(sorted(tokens))
        self.sequences = tuple(sorted(sequences))
        self._graphs: dict[tuple[int, int], _Graph] = {}
        ex = executor
        hidden = ex.lm.embed_tokens.weight.shape[1]
        layers = len(ex.lm.layers)
        t = self.tokens[-1]
        # Shared by every bucket (views of their first rows): one bucket replays at a time.
        self.x = torch.zeros(t, hidden, dtype=ex.dtype, device=ex.device)
        self.cos = torch.zeros(t, 1, ex.head_dim, dtype=ex.dtype, device=ex.device)
        self.sin = torch.zeros_like(self.cos)
        self.keys = torch.zeros(layers, t, ex.num_kv_heads, ex.head_dim, dtype=ex.dtype, device=ex.device)
        self.values = torch.zeros_like(self.keys)

    def find(self, lay: Layout) -> _Graph | None:
        """The captured graph for this batch, or None (run it eagerly)."""
        if lay.stored or lay.last is None or lay.rows > self.tokens[-1]:
            return None
        sequences = len(lay.items) + 1  # + the padding sequence
        if sequences > self.sequences[-1]:
            return None
        key = (self.tokens[bisect.bisect_left(self.tokens, lay.rows)],
               self.sequences[bisect.bisect_left(self.sequences, sequences)])
        return self._graphs.get(key)

    def capture_all(self) -> None:
        # Largest first: later captures fit in the pool memory the larger ones left.
        for tokens in reversed(self.tokens):
            for sequences in reversed(self.sequences):
                if (tokens, sequences) in self._graphs:
                    continue
                try:
                    self._graphs[(tokens, sequences)] = _Graph(self, tokens, sequences)
                except Exception as exc:  # a graph is an optimisation: its batches run eagerly
                    log.warning("capturing the %d-token, %d-sequence graph failed (%s); no more are captured",
                                tokens, sequences, exc)
                    return


class _Graph:
    def __init__(self, owner: LMGraphs, tokens: int, sequences: int):
        ex = owner.executor
        self.owner = owner
        self.tokens = tokens
        self.sequences = sequences
        self.kv_rows = tokens * sequences  # each sequence attends to at most `tokens` rows
        dev = ex.device
        long = dict(dtype=torch.long, device=dev)
        i32 = dict(dtype=torch.int32, device=dev)
        # Static plan inputs, first filled with a valid plan (the captures run it): every row one
        # causal sequence; each scored row reads key row 0.
        self.last_rows = torch.zeros(sequences, **long)
        self.full_rows = torch.full((self.kv_rows,), tokens, **long)
        self.full_rows[:tokens] = torch.arange(tokens, device=dev)
        self.full_cu_q = torch.full((sequences + 1,), tokens, **i32)
        self.full_cu_q[0] = 0
        self.full_cu_k = self.full_cu_q.clone()
        self.last_rows_kv = torch.zeros(self.kv_rows, **long)
        self.last_cu_q = torch.arange(sequences + 1, **i32)
        self.last_cu_k = torch.arange(sequences + 1, **i32)
        self.statics = [self.last_rows, self.full_rows, self.full_cu_q, self.full_cu_k, self.last_rows_kv,
                        self.last_cu_q, self.last_cu_k]
        # Upper bounds are what flash attention needs here (they size its grid, never its sums).
        full = Plan(kv_rows=self.full_rows, cu_q=self.full_cu_q, cu_k=self.full_cu_k, max_q=tokens, max_k=tokens)
        last = Plan(kv_rows=self.last_rows_kv, cu_q=self.last_cu_q, cu_k=self.last_cu_k, max_q=2, max_k=tokens)
        x, cos, sin = owner.x[:tokens], owner.cos[:tokens], owner.sin[:tokens]
        keep = (owner.keys[:, :tokens], owner.values[:, :tokens])
        self.captured: Captured = owner.pool.capture(
            lambda: ex.layers(x, cos, sin, full, last, self.last_rows, [], keep_into=keep), [])

    def plan_tensors(self, lay: Layout) -> list[torch.Tensor]:
        """The batch's plans padded to this bucket, in the order of `statics`."""
        rows, tokens, pad = lay.rows, self.tokens, self.tokens - lay.rows
        count = len(lay.items)
        empty = self.sequences - count - 1
        full = host_plan(
            [(lay.starts[i], lay.lengths[i]) for i in range(count)] + [(rows, pad)] + [(tokens, 0)] * empty,
            lay.key_runs + [[(rows, pad)]] + [[]] * empty, tokens, tokens)
        scored = len(lay.scored)
        last = host_plan([(k, 1) for k in range(self.sequences)],
                         [lay.key_runs[i] for i in lay.scored] + [[(0, 1)]] * (self.sequences - scored),
                         self.sequences, tokens)
        last_rows = torch.zeros(self.sequences, dtype=torch.long)
        last_rows[:scored] = lay.last_rows()
        return [last_rows, _padded(full, self.kv_rows, tokens), full.cu_q, full.cu_k,
                _padded(last, self.kv_rows, tokens), last.cu_q, last.cu_k]

    def run(self, lay: Layout, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, plans: list[torch.Tensor]
            ) -> tuple[torch.Tensor, dict[int, tuple[list[torch.Tensor], list[torch.Tensor]]]]:
        owner = self.owner
        for static, value in zip(self.statics, plans):
            static.copy_(value)
        owner.x[: lay.rows].copy_(x)
        owner.cos[: lay.rows].copy_(cos)
        owner.sin[: lay.rows].copy_(sin)
        z = self.captured.replay()
        kept = {}
        for i in lay.keep:
            start, length = lay.starts[i], lay.lengths[i]
            keys = owner.keys[:, start : start + length].clone()  # [layers, length, kv_heads, head_dim]
            values = owner.values[:, start : start + length].clone()
            kept[i] = (list(keys.unbind(0)), list(values.unbind(0)))
        return z[: len(lay.scored)].cpu(), kept


def _padded(plan: HostPlan, size: int, pad_row: int) -> torch.Tensor:
    flat = plan.flat.numpy()
    out = np.full(size, pad_row, dtype=np.int64)
    out[: flat.size] = flat
    return torch.from_numpy(out)
