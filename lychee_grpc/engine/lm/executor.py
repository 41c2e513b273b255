"""The GPU forward: packed sequences, a shared prefix computed once, two LM-head rows.

The HF model's own modules (embeddings, projections, norms, rotary table, vision tower) are
called directly; only the sequence layout differs from `model.forward`:
- linear layers run on the packed tokens of every sequence in the batch (no padding);
- a request's shared prefix (system + instruction + query) is one more packed sequence in the
  first batch that carries its documents; each document attends to [prefix ; its own tokens]
  with a causal mask offset by the prefix length, and the prefix's keys/values are kept for the
  request's later batches;
- attention (lm/attention.py) runs as one `varlen_attn` call over the packed rows on CUDA (flash attention, no
  padding), or as one padded SDPA call with an explicit mask elsewhere (grouped query heads
  folded into the query rows, so keys/values are never repeated);
- the last layer computes queries, o_proj and MLP only at each document's last token, and the
  score reads only the "yes" and "no" rows of the LM head: sigmoid(z_yes - z_no).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from ..prompt.prepared import EncodedImage, Segment
from ..stats import NullObserver, StatsObserver
from ..util.device_copy import PinnedStaging
from ..vision.cache import VisionCache
from ..vision.tower import VisionTower
from .attention import PackedAttention, host_plan
from .fused import FusedOps

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
    prefix, the index of another item of the same batch (a prefix computed inline), or None."""

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
        # The preprocessor's batched pixels for images with a decoded picture.
        self.fill_pixels = fill_pixels
        self.attention = PackedAttention(self.num_heads, self.num_kv_heads, self.head_dim, self.device, self.dtype)
        self.ops = FusedOps(self.device)
        self.tower = VisionTower(self.visual, self.ops, window_kernel=window_kernel)
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
            pixels = torch.cat([im.pixel_values for im in pending]).to(self.device, self.visual.dtype)
            merged = self.tower(pixels, [im.grid_thw for im in pending])
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
    @torch.inference_mode()
    def run(self, items: Sequence[BatchItem]) -> tuple[torch.Tensor, dict[int, PrefixKV]]:
        """Runs one packed batch. Returns z_yes - z_no (float32, CPU) for the items with
        `score`, in order, and the keys/values of the items with `keep_kv`, by item index."""
        segments = [it.segment for it in items]
        lengths = [len(s) for s in segments]
        starts = _cumsum0(lengths)
        ids_cpu = torch.cat([s.ids for s in segments])
        images = [im for s in segments for im in s.images]

        stored: list[PrefixKV] = []
        for it in items:
            if isinstance(it.context, PrefixKV) and all(it.context is not u for u in stored):
                stored.append(it.context)
        stored_off = {id(u): off for u, off in zip(stored, _cumsum0([u.length for u in stored]))}
        base = sum(u.length for u in stored)  # packed rows follow the stored prefixes in the K/V source
        n_total = sum(lengths)

        def key_runs(i: int) -> list[tuple[int, int]]:
            ctx = items[i].context
            runs = []
            if isinstance(ctx, PrefixKV):
                runs.append((stored_off[id(ctx)], ctx.length))
            elif isinstance(ctx, int):
                runs.append((base + starts[ctx], lengths[ctx]))
            runs.append((base + starts[i], lengths[i]))
            return runs

        full_host = host_plan(
            [(starts[i], lengths[i]) for i in range(len(items))],
            [key_runs(i) for i in range(len(items))],
            n_total, base + n_total,
        )
        scored = [i for i, it in enumerate(items) if it.score]
        last_host = (
            host_plan([(k, 1) for k in range(len(scored))], [key_runs(i) for i in scored],
                              len(scored), base + n_total)
            if scored else None
        )
        # Everything the batch needs from the host, in one transfer; image rows found on the CPU
        # (a boolean mask on the GPU would make this thread wait for the GPU).
        host = [ids_cpu, torch.cat([s.positions for s in segments], dim=1),
                torch.tensor([starts[i] + lengths[i] - 1 for i in scored], dtype=torch.long),
                full_host.flat, full_host.cu_q, full_host.cu_k]
        if last_host is not None:
            host += [last_host.flat, last_host.cu_q, last_host.cu_k]
        if images:
            host.append(torch.nonzero(ids_cpu == self.image_token_id).flatten())
        dev = self.staging.copy(host)
        ids, positions, last_rows = dev[:3]
        full = self.attention.plan(full_host, *dev[3:6])
        last = self.attention.plan(last_host, *dev[6:9]) if last_host is not None else None

        x = self.lm.embed_tokens(ids)
        if images:
            embeds = self.image_embeds(images)
            x[dev[-1]] = torch.cat(embeds).to(x.dtype)
        cos, sin = self.lm.rotary_emb(x, positions.unsqueeze(1))
        cos, sin = cos[0].unsqueeze(1), sin[0].unsqueeze(1)  # [N, 1, D]
        keep = [i for i, it in enumerate(items) if it.keep_kv]
        kept: dict[int, tuple[list[torch.Tensor], list[torch.Tensor]]] = {i: ([], []) for i in keep}

        layers = self.lm.layers
        n_layers = len(layers)
        ops, eps = self.ops, self.eps
        pad_kv = x.new_zeros(1, self.num_kv_heads, self.head_dim)
        h = ops.rms_norm(x, layers[0].input_layernorm.weight, eps)
        for li, layer in enumerate(layers):
            attn = layer.self_attn
            k = ops.rope(attn.k_proj(h).view(-1, self.num_kv_heads, self.head_dim), cos, sin)
            v = attn.v_proj(h).view(-1, self.num_kv_heads, self.head_dim)
            for i in keep:
                # Copies: a view would keep the whole batch's keys/values alive with the request.
                kept[i][0].append(k[starts[i] : starts[i] + lengths[i]].clone())
                kept[i][1].append(v[starts[i] : starts[i] + lengths[i]].clone())
            k_src = torch.cat([*[u.keys[li] for u in stored], k, pad_kv])
            v_src = torch.cat([*[u.values[li] for u in stored], v, pad_kv])
            if li == n_layers - 1:
                if last is None:
                    break  # only keys/values were wanted
                h, x = h[last_rows], x[last_rows]
                q = ops.rope(attn.q_proj(h).view(-1, self.num_heads, self.head_dim), cos[last_rows], sin[last_rows])
                at = last
            else:
                q = ops.rope(attn.q_proj(h).view(-1, self.num_heads, self.head_dim), cos, sin)
                at = full
            x, h = ops.add_rms_norm(x, attn.o_proj(self.attention(q, k_src, v_src, at)),
                                    layer.post_attention_layernorm.weight, eps)
            mlp = layer.mlp
            delta = mlp.down_proj(ops.silu_mul(mlp.gate_proj(h), mlp.up_proj(h)))
            norm_w = layers[li + 1].input_layernorm.weight if li + 1 < n_layers else self.lm.norm.weight
            x, h = ops.add_rms_norm(x, delta, norm_w, eps)
        prefixes = {i: PrefixKV(keys=ks, values=vs, length=lengths[i]) for i, (ks, vs) in kept.items()}
        if last is None:
            return torch.empty(0), prefixes
        # h is the final norm of the last layer's output at each scored sequence's last token.
        return (h.float() @ self.yes_minus_no).cpu(), prefixes

    def prefill(self, segment: Segment) -> PrefixKV:
        """Keys and values of a shared prefix on its own."""
        _, kept = self.run([BatchItem(segment, None, score=False, keep_kv=True)])
        return kept[0]


def _cumsum0(values: list[int]) -> list[int]:
    out, total = [], 0
    for v in values:
        out.append(total)
        total += v
    return out
