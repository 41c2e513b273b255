"""The GPU forward: packed sequences, a shared prefix computed once, two LM-head rows.

The HF model's own modules (embeddings, projections, norms, rotary table, vision tower) are
called directly; only the sequence layout differs from `model.forward`:
- linear layers run on the packed tokens of every sequence in the batch (no padding);
- a request's shared prefix (system + instruction + query) is one more packed sequence in the
  first batch that carries its documents; each document attends to [prefix ; its own tokens]
  with a causal mask offset by the prefix length, and the prefix's keys/values are kept for the
  request's later batches;
- attention (lm/attention.py) runs as one call over the packed rows on CUDA (the Triton kernel of
  lm/attention_kernel.py, or flash attention's `varlen_attn`; no padding), or as one padded SDPA
  call with an explicit mask elsewhere (grouped query heads folded into the query rows, so
  keys/values are never repeated);
- the last layer computes queries, o_proj and MLP only at each document's last token, and the
  score reads only the "yes" and "no" rows of the LM head: sigmoid(z_yes - z_no).

A batch is laid out on the host first (`layout`: rows, key runs, attention plans, one staged
copy), then run by the layer loop (`Executor.layers`), which knows nothing of items or prefixes
beyond the plans and the stored keys/values it is given. `launch` queues a batch's work and the copy of
its scores to the host without waiting for them, so the scheduler can launch the next batch first.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import cast

import torch

from ..prompt.prepared import EncodedImage, Segment
from ..stats import NullObserver, StatsObserver
from ..util.device_copy import HostReadbacks, PinnedStaging, Readback
from ..util.graphs import GraphCapturer
from ..vision.cache import VisionCache
from ..vision.sharing import masked_cells, window_shares
from ..vision.tower import VisionTower
from .attention import HostPlan, PackedAttention, Plan, host_plan
from .fused import FusedOps
from .graphs import GraphOptions, LMGraphs

# Image sizes (multiples of 28) whose single-image vision tower is captured as a CUDA graph at
# start-up: one image of a pair at the console's and the benchmarks' 448x448.
TOWER_GRAPH_SIZES = ((448, 448),)

log = logging.getLogger(__name__)


@dataclass
class PrefixKV:
    """Per-layer keys and values of a request's shared prefix, each [p, kv_heads, head_dim]."""

    keys: list[torch.Tensor]
    values: list[torch.Tensor]
    length: int


@dataclass
class BatchItem:
    """One packed sequence. `context` is what it attends to before its own tokens: a stored
    prefix, the index of an earlier item of the same batch (a prefix computed inline, or a head
    that documents share: heads.py), with that item's own context, or None."""

    segment: Segment
    context: PrefixKV | int | None = None
    score: bool = True  # read its last token
    keep_kv: bool = False  # return its per-layer keys/values (a prefix)


class Executor:
    def __init__(
        self, model, yes_id: int, no_id: int, vision_cache: VisionCache,
        fill_pixels: Callable[[list[EncodedImage]], None],
        observer: StatsObserver | None = None,
        window_kernel: bool = True,
        batch_invariant: bool = False,
        attention_kernel: bool = False,
        cuda_graphs: bool = False,
        graph_options: GraphOptions = GraphOptions(),
        share_windows: bool = True,
        tower_graph_cells: Sequence[int] = (),
    ):
        self.model = model
        self.lm = model.model.language_model
        self.visual = model.model.visual
        text_cfg = model.config.text_config
        self.num_heads = text_cfg.num_attention_heads
        self.num_kv_heads = text_cfg.num_key_value_heads
        self.head_dim = getattr(text_cfg, "head_dim", None) or text_cfg.hidden_size // self.num_heads
        self.image_token_id = model.config.image_token_id
        self.device = next(model.parameters()).device
        self.dtype = next(self.lm.parameters()).dtype
        rows = model.lm_head.weight.detach()[[yes_id, no_id]].float()
        self.yes_minus_no = (rows[0] - rows[1]).contiguous()
        self.vision_cache = vision_cache
        self.staging = PinnedStaging(self.device)
        self.readbacks = HostReadbacks()
        # The preprocessor's batched pixels for images with a decoded picture.
        self.fill_pixels = fill_pixels
        self.batch_invariant = batch_invariant
        self.attention = PackedAttention(self.num_heads, self.num_kv_heads, self.head_dim, self.device, self.dtype,
                                         batch_invariant=batch_invariant, kernel=attention_kernel)
        self.ops = FusedOps(self.device, batch_invariant=batch_invariant)
        self.tower = VisionTower(self.visual, self.ops, window_kernel=window_kernel)
        self.share_windows = share_windows
        self.tower_graph_cells = tuple(tower_graph_cells)
        # Small batches replay captured graphs (lm/graphs.py; CUDA with varlen or the kernel's attention),
        # once `capture_graphs` has run.
        self.graphs: LMGraphs | None = None
        # Also in the batch-invariant mode: its kernels give a row the same bits at any row count,
        # so a bucket's padding changes none of them (bench.invariance compares graphs with eager).
        if cuda_graphs and self.device.type == "cuda" and (self.attention.use_varlen or self.attention.use_kernel):
            capturer = GraphCapturer(self.device)
            self.graphs = LMGraphs(self, capturer, graph_options)
            self.tower.graphs = capturer
        self.observer: StatsObserver = observer if observer is not None else NullObserver()
        self.eps = text_cfg.rms_norm_eps
        if text_cfg.hidden_act != "silu":
            raise ValueError(f"unsupported activation {text_cfg.hidden_act!r} (Qwen2.5-VL uses silu)")

    # ---- vision -------------------------------------------------------------------------
    @torch.inference_mode()
    def image_embeds(self, images: Sequence[EncodedImage]) -> list[torch.Tensor]:
        """Vision-tower outputs for `images`, in order, from the cache where possible."""
        found: dict[bytes, torch.Tensor] = {}
        todo: dict[bytes, EncodedImage] = {}
        hits = 0
        for im in images:
            if im.key in found or im.key in todo:
                continue
            if im.embedding is not None:
                found[im.key] = im.embedding
                continue
            hit = self.vision_cache.get(im.key)
            if hit is not None:
                found[im.key] = hit
                hits += 1
            else:
                todo[im.key] = im
        if hits or todo:
            self.observer.image_cache(hits, len(todo))
        if todo:
            pending = list(todo.values())
            # Pixels are computed here, for this batch's images only, from the decoded pictures.
            undone = [im for im in pending if im.pixel_values is None]
            for im in undone:
                if im.picture is None:  # its output was cached at preparation and evicted since
                    im.picture = im.decode()
            if undone:
                self.fill_pixels(undone)
            # every pending image has its pixels now (fill_pixels above)
            pixels = torch.cat([cast(torch.Tensor, im.pixel_values) for im in pending])
            pixels = pixels.to(self.device, self.visual.dtype)
            shares = window_shares(pending, self.tower.changed_windows, self.tower.patch_size) \
                if self.share_windows else None
            merged = self.tower(pixels, [im.grid_thw for im in pending], shares)
            for im, emb in zip(pending, torch.split(merged, [im.tokens for im in pending])):
                emb = emb.to(self.dtype)
                found[im.key] = emb
                self.vision_cache.put(im.key, emb)
                im.pixel_values = im.picture = None  # no longer needed; free them now
        return [found[im.key] for im in images]

    def embed_ahead(self, images: Sequence[EncodedImage]) -> None:
        """Computes the images' tower outputs before their batch and attaches them."""
        embeds = self.image_embeds(images)
        for im, emb in zip(images, embeds):
            im.embedding = emb
            im.pixel_values = im.picture = None  # a repeated image's copy too

    # ---- language model -----------------------------------------------------------------
    def run(self, items: Sequence[BatchItem]) -> tuple[torch.Tensor, dict[int, PrefixKV]]:
        """Runs one packed batch. Returns z_yes - z_no (float32, CPU) for the items with
        `score`, in order, and the keys/values of the items with `keep_kv`, by item index."""
        scores, kept = self.launch(items)
        return scores.wait(), kept

    @torch.inference_mode()
    def launch(self, items: Sequence[BatchItem]) -> tuple[Readback, dict[int, PrefixKV]]:
        """`run` without waiting for the GPU: the scores arrive through the Readback (its copy to
        the host queued behind the batch), the kept keys/values are device tensors in stream order.
        A batch launched after this one may run before this one's scores are read."""
        lay = layout(items, self.image_token_id)
        graph = self.graphs.find(lay) if self.graphs is not None else None
        if graph is None:
            return self._run_eager(lay)
        inputs = lay.input_tensors()
        # The padded plan in the graph's packing, staged with the inputs in one transfer.
        dev = self.staging.copy([*inputs, graph.plan_bytes(lay)])
        x, cos, sin = self._inputs(lay, dev)
        z, kept = graph.run(lay, x, cos, sin, dev[len(inputs)])
        # The graph's output buffer is its own: the copy out is queued before any later replay.
        return self.readbacks.start(z), {
            i: PrefixKV(keys=ks, values=vs, length=lay.lengths[i]) for i, (ks, vs) in kept.items()}

    @torch.inference_mode()
    def run_eager(self, items: Sequence[BatchItem]) -> tuple[torch.Tensor, dict[int, PrefixKV]]:
        """`run` without the captured graphs."""
        scores, kept = self._run_eager(layout(items, self.image_token_id))
        return scores.wait(), kept

    def _run_eager(self, lay: Layout) -> tuple[Readback, dict[int, PrefixKV]]:
        inputs = lay.input_tensors()
        # Everything the batch needs from the host, in one transfer.
        dev = self.staging.copy(inputs + lay.plan_tensors())
        x, cos, sin = self._inputs(lay, dev)
        plans = dev[len(inputs):]
        full = self.attention.plan(lay.full, plans[1], plans[2], plans[3])
        last = self.attention.plan(lay.last, plans[4], plans[5], plans[6], last=True) if lay.last is not None else None
        keep = {i: ([], []) for i in lay.keep}
        z = self.layers(x, cos, sin, full, last, plans[0], lay.stored, keep_rows=[
            (i, lay.starts[i], lay.lengths[i], keep[i]) for i in lay.keep])
        prefixes = {i: PrefixKV(keys=ks, values=vs, length=lay.lengths[i]) for i, (ks, vs) in keep.items()}
        return (self.readbacks.start(z) if z is not None else Readback(torch.empty(0))), prefixes

    def _inputs(self, lay: Layout, dev: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The batch's input embeddings (image rows from the tower) and rotary tables [N, 1, D]."""
        ids, positions = dev[0], dev[1]
        x = self.lm.embed_tokens(ids)
        if lay.images:
            embeds = self.image_embeds(lay.images)
            x[dev[2]] = torch.cat(embeds).to(x.dtype)
        cos, sin = self.lm.rotary_emb(x, positions.unsqueeze(1))
        return x, cos[0].unsqueeze(1), sin[0].unsqueeze(1)

    def layers(
        self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, full: Plan, last: Plan | None,
        last_rows: torch.Tensor, stored: Sequence[PrefixKV],
        keep_rows: Sequence[tuple[int, int, int, tuple[list, list]]] = (),
        keep_into: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor | None:
        """The decoder layers over packed rows, then z_yes - z_no at `last_rows` (None without a
        last plan: only keys/values were wanted). Keys/values of the rows kept for a prefix are
        cloned per layer into `keep_rows`' lists: (item, first row, rows, (keys, values)), or
        every row's are copied into `keep_into` ([layers, rows, kv_heads, head_dim] each; the
        captured graphs' way). Runs inside a CUDA-graph capture: no host-to-device copy, no
        read-back, nothing cached across calls."""
        layers = self.lm.layers
        n_layers = len(layers)
        ops, eps = self.ops, self.eps
        pad_kv = x.new_zeros(1, self.num_kv_heads, self.head_dim)
        h = ops.rms_norm(x, layers[0].input_layernorm.weight, eps)
        for li, layer in enumerate(layers):
            attn = layer.self_attn
            k = ops.rope(ops.linear(attn.k_proj, h).view(-1, self.num_kv_heads, self.head_dim), cos, sin)
            v = ops.linear(attn.v_proj, h).view(-1, self.num_kv_heads, self.head_dim)
            for _, start, length, (ks, vs) in keep_rows:
                # Copies: a view would keep the whole batch's keys/values alive with the request.
                ks.append(k[start : start + length].clone())
                vs.append(v[start : start + length].clone())
            if keep_into is not None:
                keep_into[0][li].copy_(k)
                keep_into[1][li].copy_(v)
            k_src = torch.cat([*[u.keys[li] for u in stored], k, pad_kv])
            v_src = torch.cat([*[u.values[li] for u in stored], v, pad_kv])
            if li == n_layers - 1:
                if last is None:
                    return None
                h, x = h[last_rows], x[last_rows]
                q = ops.linear(attn.q_proj, h).view(-1, self.num_heads, self.head_dim)
                q = ops.rope(q, cos[last_rows], sin[last_rows])
                at = last
            else:
                q = ops.rope(ops.linear(attn.q_proj, h).view(-1, self.num_heads, self.head_dim), cos, sin)
                at = full
            x, h = ops.add_rms_norm(x, ops.linear(attn.o_proj, self.attention(q, k_src, v_src, at)),
                                    layer.post_attention_layernorm.weight, eps)
            mlp = layer.mlp
            # Here the fused kernel measured level with cuBLAS + the SiLU kernel (bench/RESULTS.md).
            delta = ops.linear(mlp.down_proj, ops.gate_up_silu(mlp.gate_proj, mlp.up_proj, h, cublas_first=True))
            norm_w = layers[li + 1].input_layernorm.weight if li + 1 < n_layers else self.lm.norm.weight
            x, h = ops.add_rms_norm(x, delta, norm_w, eps)
        # h is the final norm of the last layer's output at each scored sequence's last token.
        return ops.score(h, self.yes_minus_no)

    def prefill(self, segment: Segment) -> PrefixKV:
        """Keys and values of a shared prefix on its own."""
        _, kept = self.run([BatchItem(segment, None, score=False, keep_kv=True)])
        return kept[0]

    @torch.inference_mode()
    def capture_graphs(self) -> int:
        """Captures and validates the CUDA graphs of small batches, and of the tower at
        TOWER_GRAPH_SIZES (one image; with `tower_graph_cells`, the picture with its masked cells,
        and its cells alone), at start-up, before serving; returns how many LM graphs are kept. A
        no-op where graphs are off."""
        if self.graphs is None:
            return 0
        if self.graphs.capture_all():
            self.graphs.validate()
        self.capture_tower_graphs()
        return len(self.graphs)

    def capture_tower_graphs(self) -> None:
        """The tower's calls at TOWER_GRAPH_SIZES: one image, and for each of `tower_graph_cells`
        a picture with its masked cells (Explain's call) and the cells alone (its call when a
        Rerank of the pair has cached the picture's output)."""
        patch, merge = self.tower.patch_size, self.tower.merge
        for height, width in TOWER_GRAPH_SIZES:
            grid = (1, height // patch, width // patch)
            self.tower.capture([grid], self.visual.dtype)
            for cells in self.tower_graph_cells:
                images = masked_cells(grid, (height, width), cells, tokens=grid[1] * grid[2] // merge**2)
                for call in (images, images[1:]):
                    shares = window_shares(call, self.tower.changed_windows, patch) if self.share_windows else None
                    self.tower.capture([im.grid_thw for im in call], self.visual.dtype, shares)


@dataclass
class Layout:
    """A batch's host side: where each packed sequence's rows lie and which rows each attends
    to, in the tensors the device needs (copied in one transfer)."""

    items: Sequence[BatchItem]
    lengths: list[int]
    starts: list[int]
    rows: int  # packed rows (tokens) of the batch
    stored: list[PrefixKV]  # stored prefixes, in the order their rows precede the batch's in K/V
    base: int  # rows of stored prefixes before the batch's own rows in the key/value source
    key_runs: list[list[tuple[int, int]]]  # per item: (first row, count) runs of the K/V source
    scored: list[int]
    keep: list[int]
    full: HostPlan
    last: HostPlan | None
    ids: torch.Tensor
    positions: torch.Tensor
    images: list[EncodedImage]
    # Rows holding image tokens, found on the CPU (a boolean mask on the GPU would make the
    # launching thread wait for the GPU).
    image_rows: torch.Tensor | None = None

    def input_tensors(self) -> list[torch.Tensor]:
        """ids, positions and (with images) image rows."""
        return [self.ids, self.positions] + ([self.image_rows] if self.image_rows is not None else [])

    def last_rows(self) -> torch.Tensor:
        return torch.tensor([self.starts[i] + self.lengths[i] - 1 for i in self.scored], dtype=torch.long)

    def plan_tensors(self) -> list[torch.Tensor]:
        """Last rows, the full plan (3) and the last plan (3)."""
        out = [self.last_rows(), self.full.flat, self.full.cu_q, self.full.cu_k]
        if self.last is not None:
            out += [self.last.flat, self.last.cu_q, self.last.cu_k]
        return out


def layout(items: Sequence[BatchItem], image_token_id: int) -> Layout:
    """The host layout of a batch (no device work)."""
    segments = [it.segment for it in items]
    lengths = [len(s) for s in segments]
    starts = _cumsum0(lengths)
    stored: list[PrefixKV] = []
    for it in items:
        if isinstance(it.context, PrefixKV) and all(it.context is not u for u in stored):
            stored.append(it.context)
    stored_off = {id(u): off for u, off in zip(stored, _cumsum0([u.length for u in stored]))}
    base = sum(u.length for u in stored)  # packed rows follow the stored prefixes in the K/V source
    rows = sum(lengths)

    runs: list[list[tuple[int, int]]] = []
    for i, it in enumerate(items):  # a context item comes before the items reading it
        ctx = it.context
        if isinstance(ctx, PrefixKV):
            context = [(stored_off[id(ctx)], ctx.length)]
        elif isinstance(ctx, int):
            if not 0 <= ctx < i:
                raise ValueError(f"item {i} reads item {ctx}, which does not come before it")
            context = runs[ctx]  # its context too: a document's head reads the request's prefix
        else:
            context = []
        runs.append([*context, (base + starts[i], lengths[i])])
    scored = [i for i, it in enumerate(items) if it.score]
    full = host_plan([(starts[i], lengths[i]) for i in range(len(items))], runs, rows, base + rows)
    last = host_plan([(k, 1) for k in range(len(scored))], [runs[i] for i in scored], len(scored), base + rows) \
        if scored else None
    ids = torch.cat([s.ids for s in segments])
    images = [im for s in segments for im in s.images]
    lay = Layout(items=items, lengths=lengths, starts=starts, rows=rows, stored=stored, base=base, key_runs=runs,
                 scored=scored, keep=[i for i, it in enumerate(items) if it.keep_kv], full=full, last=last, ids=ids,
                 positions=torch.cat([s.positions for s in segments], dim=1), images=images)
    if images:
        lay.image_rows = torch.nonzero(ids == image_token_id).flatten()
    return lay


def _cumsum0(values: list[int]) -> list[int]:
    out, total = [], 0
    for v in values:
        out.append(total)
        total += v
    return out
