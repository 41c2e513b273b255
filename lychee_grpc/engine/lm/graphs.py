"""CUDA graphs of the language model for small batches: one pair, or a few documents.

A batch of up to `SEQUENCE_BUCKETS[-1] - 1` packed sequences and `TOKEN_BUCKETS[-1]` tokens, with
no stored prefix (a request's first batch: its prefix computed inline), is padded up to a bucket
and replayed from a graph captured at start-up (`Executor.capture_graphs`). The padding is one
extra sequence of throwaway rows that attend only to themselves, and empty sequences: the real
sequences' rows, plans and keys are those of the eager path, so their scores are the eager path's
up to the matmuls' rounding at another row count. In the batch-invariant mode every kernel gives a
row the same bits at any row count, so there a graph's scores are the eager path's bit for bit
(`python -m bench.invariance` scores pairs alone, through graphs, and in larger eager batches).

What stays outside the graph, per call: the embeddings (image rows scattered in), the rotary
tables, the padded plan built on the host, one staged copy to the device (the plan lands in the
graph's static buffer with one more device copy), and the copies into the static inputs. Keys and
values a request keeps (its prefix) are copied out of the graph's per-layer buffers after the replay.

Start-up validation (`LMGraphs.validate`): every captured graph is replayed on a batch that fills
its bucket and on a padded one and compared with the eager path (bit for bit in the
batch-invariant mode); any exception or mismatch drops
every graph (a warning in the log) and batches run eagerly. Captures run in inference mode: with
autograd on, each warm-up's activations stayed alive through the kept keys (bench/RESULTS.md,
"CUDA graphs of small batches", where the H200 runs are).

The elementwise pieces are captured as the eager path runs them at these sizes: eagerly (every
bucket is under fused.Kernel.eager_below; a test pins it), except the LM's RoPE, whose kernel is
eager's result bit for bit and serves every size.
"""

from __future__ import annotations

import bisect
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ..prompt.prepared import Segment
from .attention import HostPlan, Plan, host_plan

if TYPE_CHECKING:
    from .executor import BatchItem, Executor, Layout

log = logging.getLogger(__name__)

# Padded token counts, and sequence counts (a pair is its prefix, its document and the padding).
# All below fused.Kernel.eager_below: the eager path runs these batches' elementwise ops eagerly
# too, so a graph and the eager path differ only by the padding (at 1,024 rows the eager path's
# compiled kernels round differently: z 0.35 apart on the H200 with random weights).
TOKEN_BUCKETS = (64, 128, 192, 256, 384, 512, 768)
SEQUENCE_BUCKETS = (3, 9)
# How far a graph's z may be from the eager path's at start-up. A batch that fills its bucket
# exactly runs the same shapes both ways: only the last layer's attention call differs (the graph
# declares two query rows), so z agrees to bf16 rounding (FILLED_ATOL). A padded batch's matmuls see
# more rows than the eager path's (cuBLAS picks other kernels), and bf16 rounding through 28
# layers moves z by up to ~0.2 with random weights (H200, bench/RESULTS.md "CUDA graphs of small
# batches"), as batching does anyway; that check only catches a broken padding (PADDED_*).
FILLED_ATOL = 0.05
PADDED_ATOL = 0.5
PADDED_RTOL = 0.05

_ALIGN = 16


@dataclass(frozen=True)
class GraphOptions:
    tokens: tuple[int, ...] = TOKEN_BUCKETS
    sequences: tuple[int, ...] = SEQUENCE_BUCKETS


class LMGraphs:
    """The captured small-batch forwards of one executor, by (tokens, sequences) bucket."""

    def __init__(self, executor: Executor, capturer: Any, options: GraphOptions = GraphOptions()):
        """`capturer`: util/graphs.GraphCapturer, or a stand-in with its `capture(fn)` (CPU tests)."""
        self.executor = executor
        self.capturer = capturer
        self.options = options
        self.tokens = tuple(sorted(options.tokens))
        self.sequences = tuple(sorted(options.sequences))
        if self.sequences[0] < 2:
            raise ValueError("a sequence bucket holds at least one sequence and the padding")
        self._graphs: dict[tuple[int, int], _Graph] = {}
        self.replays = 0  # batches run through a graph (the probe reads it)
        ex = executor
        hidden = ex.lm.embed_tokens.weight.shape[1]
        layers = len(ex.lm.layers)
        t = self.tokens[-1]
        # Static inputs shared by every bucket (views of their first rows): one graph replays at a time.
        self.x = torch.zeros(t, hidden, dtype=ex.dtype, device=ex.device)
        self.cos = torch.zeros(t, 1, ex.head_dim, dtype=ex.dtype, device=ex.device)
        self.sin = torch.zeros_like(self.cos)
        self.keys = torch.zeros(layers, t, ex.num_kv_heads, ex.head_dim, dtype=ex.dtype, device=ex.device)
        self.values = torch.zeros_like(self.keys)

    @property
    def captured(self) -> list[tuple[int, int]]:
        return list(self._graphs)

    def __len__(self) -> int:
        return len(self._graphs)

    def bucket(self, rows: int, items: int) -> tuple[int, int] | None:
        """The (tokens, sequences) bucket of a batch of `rows` tokens in `items` sequences."""
        sequences = items + 1  # + the padding sequence
        if rows > self.tokens[-1] or sequences > self.sequences[-1] or rows < 1:
            return None
        return (self.tokens[bisect.bisect_left(self.tokens, rows)],
                self.sequences[bisect.bisect_left(self.sequences, sequences)])

    def find(self, lay: Layout) -> _Graph | None:
        """The captured graph for this batch, or None (run it eagerly)."""
        if lay.stored or lay.last is None:
            return None
        key = self.bucket(lay.rows, len(lay.items))
        return self._graphs.get(key) if key is not None else None

    @torch.inference_mode()
    def capture_all(self) -> int:
        """Captures every bucket; on any failure none are kept. Returns how many exist."""
        # Largest first: a later capture fits in memory an earlier one's warm-ups left cached.
        keys = [(t, s) for t in self.tokens for s in self.sequences][::-1]
        try:
            # Every bucket is under fused.Kernel.eager_below: the captured elementwise ops are the
            # eager ones, as the eager path runs them at these sizes.
            for tokens, sequences in keys:
                self._graphs[(tokens, sequences)] = _Graph(self, tokens, sequences)
        except Exception as exc:  # a graph is an optimisation: batches run eagerly
            log.warning("capturing the LM's CUDA graphs failed (%s); small batches run eagerly", exc)
            self.drop()
        return len(self._graphs)

    def drop(self) -> None:
        self._graphs.clear()

    @torch.inference_mode()
    def validate(self) -> dict[tuple[int, int], float]:
        """Replays every graph on synthetic batches of its bucket and compares z and the kept
        prefix with the eager path, in capture order (bit for bit in the batch-invariant mode). Returns the
        largest |z difference| per bucket; drops every graph (and says why in the log) on an
        exception or a difference beyond the tolerance."""
        diffs: dict[tuple[int, int], float] = {}
        keys = list(self._graphs)  # in capture order
        ex = self.executor
        try:
            for key in keys:
                for filled in (True, False):
                    items = self.synthetic_batch(*key, filled=filled)
                    z_eager, kept_eager = ex.run_eager(items)
                    z_graph, kept_graph = ex.run(items)
                    if ex.graphs is not self or self.replays == 0:
                        raise RuntimeError("the executor does not replay these graphs")
                    diff = _worst(z_graph, z_eager)
                    for i, eager in kept_eager.items():
                        graph = kept_graph[i]
                        for a, b in zip(eager.keys + eager.values, graph.keys + graph.values):
                            diff = max(diff, _worst(b.float().cpu(), a.float().cpu()))
                    # The batch-invariant mode promises the same bits at any row count: nothing less here.
                    limit = 0.0 if ex.batch_invariant else (
                        FILLED_ATOL if filled else PADDED_ATOL + PADDED_RTOL * float(z_eager.abs().max()))
                    diffs[key] = max(diffs.get(key, 0.0), diff)
                    if not math.isfinite(diff) or diff > limit:
                        raise RuntimeError(f"the {key[0]}-token, {key[1]}-sequence graph is {diff:.3g} from the "
                                           f"eager path on a {'filled' if filled else 'padded'} batch")
        except Exception as exc:  # a graph is an optimisation: batches run eagerly
            log.warning("the LM's CUDA graphs failed validation (%s); small batches run eagerly", exc)
            self.drop()
        return diffs

    def synthetic_batch(self, tokens: int, sequences: int, filled: bool = False) -> list[BatchItem]:
        """A text batch that lands in the (tokens, sequences) bucket: a prefix computed inline and
        kept, and documents reading it. `filled`: exactly the bucket's rows and sequences (an
        empty padding sequence); else with padding rows and, in a larger sequence bucket, empty
        sequences."""
        from .executor import BatchItem

        i = self.tokens.index(tokens)
        below_t = self.tokens[i - 1] if i else 0
        j = self.sequences.index(sequences)
        below_s = self.sequences[j - 1] if j else 0
        if filled:
            rows, count = tokens, sequences - 1
        else:
            rows = tokens - max(1, (tokens - below_t) // 4)
            count = max(2, below_s)  # items: one more sequence than the bucket below holds, with the padding
        prefix = max(1, rows // 3)
        rest = rows - prefix
        docs = [rest // (count - 1) + (1 if k < rest % (count - 1) else 0) for k in range(count - 1)]
        vocab = int(self.executor.lm.embed_tokens.weight.shape[0])
        gen = torch.Generator().manual_seed(tokens * 31 + sequences)

        def segment(n: int, first: int) -> Segment:
            ids = torch.randint(0, min(vocab, 32000), (n,), generator=gen)
            return Segment(ids=ids, positions=torch.arange(first, first + n).expand(3, -1).clone(), images=[])

        items = [BatchItem(segment(prefix, 0), None, score=False, keep_kv=True)]
        items += [BatchItem(segment(n, prefix), 0) for n in docs]
        return items


class _Graph:
    def __init__(self, owner: LMGraphs, tokens: int, sequences: int):
        ex = owner.executor
        self.owner = owner
        self.tokens = tokens
        self.sequences = sequences
        self.kv_rows = tokens * sequences  # each sequence attends to at most `tokens` rows
        s, kv = sequences, self.kv_rows
        # The static plan: one device buffer, filled by one copy per replay. Its tensors, in order:
        # last rows, the full plan's key rows, cu_q, cu_k, the last plan's key rows, cu_q, cu_k.
        self.fields: list[tuple[torch.dtype, int]] = [
            (torch.long, s), (torch.long, kv), (torch.int32, s + 1), (torch.int32, s + 1),
            (torch.long, kv), (torch.int32, s + 1), (torch.int32, s + 1)]
        self.offsets, self.nbytes = _layout_bytes(self.fields)
        self.buf = torch.zeros(self.nbytes, dtype=torch.uint8, device=ex.device)
        self.statics = [self.buf[o : o + n * _size(d)].view(d) for (d, n), o in zip(self.fields, self.offsets)]
        # First a valid plan (the warm-ups and the capture run it): every row one causal
        # sequence; each scored row reads key row 0.
        full_rows = np.full(kv, tokens, dtype=np.int64)
        full_rows[:tokens] = np.arange(tokens)
        full_cu = np.full(s + 1, tokens, dtype=np.int32)
        full_cu[0] = 0
        self.buf.copy_(self._pack([np.zeros(s, np.int64), full_rows, full_cu, full_cu, np.zeros(kv, np.int64),
                                   np.arange(s + 1, dtype=np.int32), np.arange(s + 1, dtype=np.int32)]))
        last_rows, f_rows, f_cu_q, f_cu_k, l_rows, l_cu_q, l_cu_k = self.statics
        self.last_rows = last_rows
        # Upper bounds are what flash attention needs here (they size its grid, never its sums);
        # the last plan declares 2 query rows, as the batch-invariant mode does (lm/attention.py).
        full = Plan(kv_rows=f_rows, cu_q=f_cu_q, cu_k=f_cu_k, max_q=tokens, max_k=tokens)
        last = Plan(kv_rows=l_rows, cu_q=l_cu_q, cu_k=l_cu_k, max_q=2, max_k=tokens, last=True)
        x, cos, sin = owner.x[:tokens], owner.cos[:tokens], owner.sin[:tokens]
        keep = (owner.keys[:, :tokens], owner.values[:, :tokens])
        self.captured = owner.capturer.capture(
            lambda: ex.layers(x, cos, sin, full, last, last_rows, [], keep_into=keep))

    def _pack(self, arrays: Sequence[np.ndarray]) -> torch.Tensor:
        out = np.zeros(self.nbytes, dtype=np.uint8)
        for (dtype, n), off, a in zip(self.fields, self.offsets, arrays):
            if a.size != n:
                raise ValueError(f"a plan field of {a.size} values where the bucket holds {n}")
            raw = np.ascontiguousarray(a, dtype=_NP[dtype]).view(np.uint8)
            out[off : off + raw.size] = raw
        return torch.from_numpy(out)

    def plan_bytes(self, lay: Layout) -> torch.Tensor:
        """The batch's plans padded to this bucket, packed as the static buffer holds them (host)."""
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
        last_rows = np.zeros(self.sequences, dtype=np.int64)
        last_rows[:scored] = lay.last_rows().numpy()
        return self._pack([last_rows, _padded(full, self.kv_rows, tokens), full.cu_q.numpy(), full.cu_k.numpy(),
                           _padded(last, self.kv_rows, tokens), last.cu_q.numpy(), last.cu_k.numpy()])

    def run(self, lay: Layout, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, plan: torch.Tensor
            ) -> tuple[torch.Tensor, dict[int, tuple[list[torch.Tensor], list[torch.Tensor]]]]:
        owner = self.owner
        self.buf.copy_(plan)
        owner.x[: lay.rows].copy_(x)
        owner.cos[: lay.rows].copy_(cos)
        owner.sin[: lay.rows].copy_(sin)
        z = self.captured.replay()
        owner.replays += 1
        kept = {}
        for i in lay.keep:
            start, length = lay.starts[i], lay.lengths[i]
            keys = owner.keys[:, start : start + length].clone()  # [layers, length, kv_heads, head_dim]
            values = owner.values[:, start : start + length].clone()
            kept[i] = (list(keys.unbind(0)), list(values.unbind(0)))
        return z[: len(lay.scored)], kept  # on the device: the executor queues its copy out


_NP = {torch.long: np.int64, torch.int32: np.int32}


def _size(dtype: torch.dtype) -> int:
    return torch.empty(0, dtype=dtype).element_size()


def _layout_bytes(fields: Sequence[tuple[torch.dtype, int]]) -> tuple[list[int], int]:
    offsets, total = [], 0
    for dtype, n in fields:
        offsets.append(total)
        total += -(-n * _size(dtype) // _ALIGN) * _ALIGN
    return offsets, total


def _padded(plan: HostPlan, size: int, pad_row: int) -> np.ndarray:
    flat = plan.flat.numpy()
    if flat.size > size:
        raise ValueError(f"a plan of {flat.size} key rows where the bucket holds {size}")
    out = np.full(size, pad_row, dtype=np.int64)
    out[: flat.size] = flat
    return out


def _worst(a: torch.Tensor, b: torch.Tensor) -> float:
    if a.shape != b.shape:
        return math.inf
    if a.numel() == 0:
        return 0.0
    d = (a.float() - b.float()).abs().max()
    return float(d) if bool(torch.isfinite(a).all()) else math.inf
