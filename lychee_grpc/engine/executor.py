"""The GPU forward: packed sequences, a shared prefix computed once, two LM-head rows.

The HF model's own modules (embeddings, decoder layers' projections and norms, rotary table,
vision tower) are called directly; only the sequence layout differs from `model.forward`:
- linear layers run on the packed tokens of every document (no padding);
- attention gathers each document's queries into a padded block and its keys/values as
  [its prefix ; its own tokens], with a causal mask offset by the prefix length; grouped
  query heads are folded into the query rows so keys/values are never repeated;
- a prefix is run once per request and only its keys/values are kept;
- the last layer computes queries, o_proj and MLP only at each document's last token, and the
  score reads only the "yes" and "no" rows of the LM head: sigmoid(z_yes - z_no).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .fused import FusedOps
from .prepare import EncodedImage, Segment
from .vision_cache import VisionCache


@dataclass
class PrefixKV:
    """Per-layer keys and values of a request's shared prefix, each [p, kv_heads, head_dim]."""

    keys: list[torch.Tensor]
    values: list[torch.Tensor]
    length: int


@dataclass
class _Layout:
    """Index tensors describing one packed batch for attention."""

    q_index: torch.Tensor  # [B, Lq] rows of the packed queries (N = padding row)
    q_pos: torch.Tensor  # [B, Lq] position of each query within its own segment
    kv_index: torch.Tensor  # [B, S] rows of cat(prefix rows, packed rows, padding row)
    mask: torch.Tensor  # [B, 1, rep*Lq, S] True where attention is allowed
    out_index: torch.Tensor  # [Nq] flat rows of the padded output that are real


class Executor:
    def __init__(self, model, yes_id: int, no_id: int, vision_cache_bytes: int):
        self.model = model
        self.lm = model.model.language_model
        self.visual = model.model.visual
        text_cfg = model.config.text_config
        self.num_heads = text_cfg.num_attention_heads
        self.num_kv_heads = text_cfg.num_key_value_heads
        self.head_dim = getattr(text_cfg, "head_dim", None) or text_cfg.hidden_size // self.num_heads
        self.rep = self.num_heads // self.num_kv_heads
        self.scale = self.head_dim**-0.5
        self.image_token_id = model.config.image_token_id
        self.merge = model.config.vision_config.spatial_merge_size
        self.device = next(model.parameters()).device
        self.dtype = next(self.lm.parameters()).dtype
        rows = model.lm_head.weight.detach()[[yes_id, no_id]].float()
        self.yes_minus_no = (rows[0] - rows[1]).contiguous()
        self.vision_cache = VisionCache(vision_cache_bytes)
        self.ops = FusedOps(self.device)
        self.ops.install_vision(self.visual)
        self.eps = text_cfg.rms_norm_eps
        if text_cfg.hidden_act != "silu":
            raise ValueError(f"unsupported activation {text_cfg.hidden_act!r} (Qwen2.5-VL uses silu)")

    # ---- vision -------------------------------------------------------------------------
    @torch.inference_mode()
    def image_embeds(self, images: Sequence[EncodedImage]) -> tuple[list[torch.Tensor], int]:
        """Vision-tower outputs for `images`, from the cache where possible.
        Returns the embeddings in order and the number of images the tower ran on."""
        found: dict[bytes, torch.Tensor] = {}
        todo: dict[bytes, EncodedImage] = {}
        for im in images:
            if im.key in found or im.key in todo:
                continue
            hit = self.vision_cache.get(im.key)
            if hit is not None:
                found[im.key] = hit
            else:
                todo[im.key] = im
        if todo:
            pending = list(todo.values())
            pixels = torch.cat(
                [im.pixel_values if im.pixel_values is not None else im.pixels() for im in pending]
            ).to(self.device, self.visual.dtype)
            grid = torch.tensor([im.grid_thw for im in pending], device=self.device)
            merged = self.visual(pixels, grid_thw=grid).pooler_output
            for im, emb in zip(pending, torch.split(merged, [im.tokens for im in pending])):
                emb = emb.to(self.dtype)
                found[im.key] = emb
                self.vision_cache.put(im.key, emb)
        return [found[im.key] for im in images], len(todo)

    # ---- language model -----------------------------------------------------------------
    def _embed(self, segments: Sequence[Segment]) -> tuple[torch.Tensor, int]:
        ids = torch.cat([s.ids for s in segments]).to(self.device, non_blocking=True)
        x = self.lm.embed_tokens(ids)
        images = [im for s in segments for im in s.images]
        ran = 0
        if images:
            embeds, ran = self.image_embeds(images)
            x[ids == self.image_token_id] = torch.cat(embeds).to(x.dtype)
        return x, ran

    def _layout(
        self, lengths: list[int], prefix_lengths: list[int], prefix_offsets: list[int],
        prefix_rows: int, last_only: bool,
    ) -> _Layout:
        dev = self.device
        B = len(lengths)
        n_total = sum(lengths)
        lens = torch.tensor(lengths)
        plens = torch.tensor(prefix_lengths)
        starts = torch.cumsum(lens, 0) - lens
        if last_only:
            lq = 1
            q_pos = (lens - 1).unsqueeze(1)
            q_valid = torch.ones(B, 1, dtype=torch.bool)
        else:
            lq = max(lengths)
            q_pos = torch.arange(lq).unsqueeze(0).expand(B, lq)
            q_valid = q_pos < lens.unsqueeze(1)
        q_index = torch.where(q_valid, starts.unsqueeze(1) + q_pos, torch.full_like(q_pos, n_total))
        q_pos = torch.where(q_valid, q_pos, torch.zeros_like(q_pos))

        total = plens + lens
        S = int(total.max())
        col = torch.arange(S).unsqueeze(0).expand(B, S)
        in_prefix = col < plens.unsqueeze(1)
        in_doc = (~in_prefix) & (col < total.unsqueeze(1))
        pad_row = prefix_rows + n_total
        kv_index = torch.full((B, S), pad_row, dtype=torch.long)
        kv_index = torch.where(in_prefix, torch.tensor(prefix_offsets).unsqueeze(1) + col, kv_index)
        kv_index = torch.where(
            in_doc, prefix_rows + starts.unsqueeze(1) + col - plens.unsqueeze(1), kv_index
        )
        # Query j of a document sees its prefix and its own tokens 0..j (causal).
        allowed = col.unsqueeze(1) <= (plens.unsqueeze(1) + q_pos).unsqueeze(2)  # [B, Lq, S]
        allowed &= (in_prefix | in_doc).unsqueeze(1)
        mask = allowed.unsqueeze(1).expand(B, self.rep, lq, S).reshape(B, 1, self.rep * lq, S)
        out_index = torch.nonzero(q_valid.flatten()).flatten()
        return _Layout(
            q_index=q_index.to(dev), q_pos=q_pos.to(dev), kv_index=kv_index.to(dev),
            mask=mask.to(dev), out_index=out_index.to(dev),
        )

    def _attention(
        self, q: torch.Tensor, k_src: torch.Tensor, v_src: torch.Tensor, lay: _Layout
    ) -> torch.Tensor:
        """q: [Nq_packed, H, D]; k_src/v_src: [rows, Hkv, D] with the padding row last."""
        B, lq = lay.q_index.shape
        q_pad = torch.cat([q, q.new_zeros(1, *q.shape[1:])])[lay.q_index]  # [B, Lq, H, D]
        q_pad = q_pad.view(B, lq, self.num_kv_heads, self.rep, self.head_dim)
        q_pad = q_pad.permute(0, 2, 3, 1, 4).reshape(B, self.num_kv_heads, self.rep * lq, self.head_dim)
        k = k_src[lay.kv_index].transpose(1, 2)  # [B, Hkv, S, D]
        v = v_src[lay.kv_index].transpose(1, 2)
        out = F.scaled_dot_product_attention(q_pad, k, v, attn_mask=lay.mask, scale=self.scale)
        out = out.view(B, self.num_kv_heads, self.rep, lq, self.head_dim).permute(0, 3, 1, 2, 4)
        out = out.reshape(B * lq, self.num_heads * self.head_dim)
        return out[lay.out_index]

    @torch.inference_mode()
    def _run(
        self,
        segments: Sequence[Segment],
        prefixes: Sequence[PrefixKV | None],
        keep_kv: bool,
    ) -> tuple[torch.Tensor | None, list[tuple[torch.Tensor, torch.Tensor]], int]:
        """Runs packed segments. Returns (hidden at each segment's last token after the final
        norm, or None when keep_kv), the per-layer (k, v) of all packed tokens when keep_kv,
        and how many images the vision tower ran on."""
        x, ran = self._embed(segments)
        lengths = [len(s) for s in segments]
        positions = torch.cat([s.positions for s in segments], dim=1).to(self.device)
        cos, sin = self.lm.rotary_emb(x, positions.unsqueeze(1))
        cos, sin = cos[0].unsqueeze(1), sin[0].unsqueeze(1)  # [N, 1, D]

        unique: list[PrefixKV] = []
        for p in prefixes:
            if p is not None and all(p is not u for u in unique):
                unique.append(p)
        offsets = {id(u): off for u, off in zip(unique, _cumsum0([u.length for u in unique]))}
        prefix_rows = sum(u.length for u in unique)
        plens = [0 if p is None else p.length for p in prefixes]
        poffs = [0 if p is None else offsets[id(p)] for p in prefixes]
        full = self._layout(lengths, plens, poffs, prefix_rows, last_only=False)
        last = None if keep_kv else self._layout(lengths, plens, poffs, prefix_rows, last_only=True)

        kv: list[tuple[torch.Tensor, torch.Tensor]] = []
        layers = self.lm.layers
        n_layers = len(layers)
        ops, eps = self.ops, self.eps
        pad_kv = x.new_zeros(1, self.num_kv_heads, self.head_dim)
        h = ops.rms_norm(x, layers[0].input_layernorm.weight, eps)
        for li, layer in enumerate(layers):
            attn = layer.self_attn
            k = attn.k_proj(h).view(-1, self.num_kv_heads, self.head_dim)
            v = attn.v_proj(h).view(-1, self.num_kv_heads, self.head_dim)
            k = ops.rope(k, cos, sin)
            if keep_kv:
                kv.append((k, v))
                if li == n_layers - 1:
                    break  # a prefix's own outputs are never read
            is_last = li == n_layers - 1
            lay = last if is_last and last is not None else full
            if is_last:
                rows = lay.q_index[:, 0]
                h, x, cos_q, sin_q = h[rows], x[rows], cos[rows], sin[rows]
                lay = _Layout(
                    q_index=torch.arange(len(segments), device=self.device).unsqueeze(1),
                    q_pos=lay.q_pos, kv_index=lay.kv_index, mask=lay.mask, out_index=lay.out_index,
                )
            else:
                cos_q, sin_q = cos, sin
            q = ops.rope(attn.q_proj(h).view(-1, self.num_heads, self.head_dim), cos_q, sin_q)
            k_src = torch.cat([*[u.keys[li] for u in unique], k, pad_kv])
            v_src = torch.cat([*[u.values[li] for u in unique], v, pad_kv])
            attn_out = attn.o_proj(self._attention(q, k_src, v_src, lay))
            x, h = ops.add_rms_norm(x, attn_out, layer.post_attention_layernorm.weight, eps)
            mlp = layer.mlp
            delta = mlp.down_proj(ops.silu_mul(mlp.gate_proj(h), mlp.up_proj(h)))
            norm_w = layers[li + 1].input_layernorm.weight if li + 1 < n_layers else self.lm.norm.weight
            x, h = ops.add_rms_norm(x, delta, norm_w, eps)
        if keep_kv:
            return None, kv, ran
        return h, kv, ran  # h is the final norm of the last layer's output

    def prefill(self, segment: Segment) -> tuple[PrefixKV, int]:
        """Keys and values of a shared prefix, computed once per request."""
        _, kv, ran = self._run([segment], [None], keep_kv=True)
        return PrefixKV(keys=[k for k, _ in kv], values=[v for _, v in kv], length=len(segment)), ran

    def score(
        self, segments: Sequence[Segment], prefixes: Sequence[PrefixKV | None]
    ) -> tuple[torch.Tensor, int]:
        """z_yes - z_no at each segment's last token (float32, on the CPU)."""
        hidden, _, ran = self._run(segments, prefixes, keep_kv=False)
        assert hidden is not None
        logits = hidden.float() @ self.yes_minus_no
        return logits.cpu(), ran


def _cumsum0(values: list[int]) -> list[int]:
    out, total = [], 0
    for v in values:
        out.append(total)
        total += v
    return out
