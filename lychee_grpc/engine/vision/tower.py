"""The Qwen2.5-VL vision tower's forward for a batch of images, with its layout cached per grid.

transformers' `Qwen2_5_VisionTransformerPretrainedModel.forward` rebuilds, for every call and
image by image in Python, the rotary positions, the window order and the sequence boundaries,
then embeds patches with a Conv3d. For 100 images that set-up kept the GPU idle for ~40 ms and
the Conv3d (stride = kernel, so a plain GEMM) took 12 ms. Here:

- each image grid's layout is computed once with transformers' own helpers and kept: its
  window permutation, window lengths and rotary cos/sin already in window order;
- a batch's layout is those pieces concatenated with offsets (one device copy each);
- the patch embedding is the Conv3d's weight used as a [out, in] matrix, the same sums;
- each block runs here, explicitly, with the block's own weights: its norms, SiLU*up, rotary and
  matmuls through `FusedOps` (Triton kernels on CUDA), its attention through `VisionAttention`; each
  residual add is fused with the RMSNorm after it (the next block's norm1, the merger's ln_q), and
  the merger's MLP goes through `FusedOps` too. Nothing in the HF model is replaced.
- images that equal another of the call outside a box (Explain's masked cells, sharing.py) run the
  windows they share with it once through the blocks before the first full-attention block.
- `graphs` (CUDA, set by the executor): a tower call captured at start-up (`capture`: its grids
  and the windows its images share) replays as a CUDA graph, once its replay has matched the
  eager forward on random pixels. One image's tower is ~600 small launches that the GPU runs
  faster than the host issues them. So is a picture with its masked cells: Explain's 17 images
  at 448x448 launched in 12.7 ms on the H200 host alone and took ~46 ms of the GPU's time beside
  the documents' preparation, against 35 ms of kernels (bench/RESULTS.md). Other batches of
  images keep the GPU busy and stay eager.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from transformers.vision_utils import get_vision_position_ids, get_vision_window_index

from ..lm.fused import FusedOps
from ..util.device_copy import to_device
from ..util.graphs import Captured, GraphCapturer
from ..util.lru import LRU
from .attention import Plan, VisionAttention
from .sharing import WindowShare

log = logging.getLogger(__name__)

Grid = tuple[int, int, int]

# How far a tower graph's replay may be from the eager forward at start-up (bf16 rounding of a
# launch order captured once); in the batch-invariant mode, not a bit.
GRAPH_ATOL = 0.05
GRAPH_RTOL = 0.02


def _grid(g: Sequence[int]) -> Grid:
    """A grid as plain ints (callers pass tensors' rows too)."""
    return (int(g[0]), int(g[1]), int(g[2]))


@dataclass(frozen=True)
class _ImageLayout:
    patches: int
    frame: int  # patches per frame: the full-attention span
    window_index: np.ndarray  # merge units of this image in window order
    window_lengths: list[int]  # patches per window, windows in order, none empty
    unit_window: np.ndarray  # for each merge unit (image order), the window it is in
    cos: torch.Tensor  # [patches, head_dim] float32, window order, on the tower's device
    sin: torch.Tensor


@dataclass
class _BatchLayout:
    """A batch of images' layout on the device: attention plans, rotary tables, window order."""

    plan_full: Plan
    plan_windows: Plan
    cos: torch.Tensor
    sin: torch.Tensor
    window_index: torch.Tensor  # merge units in window order
    reverse: torch.Tensor  # back to image order


@dataclass(frozen=True)
class _SharePlan:
    """Which windows run the window-only blocks when images share windows (the host's side of
    `_Shared`): `owner[w]` is the window whose rows window w takes, among the call's windows."""

    owner: np.ndarray
    lengths: np.ndarray  # rows of each window

    @property
    def kept(self) -> np.ndarray:
        return self.owner == np.arange(self.owner.size)


CallKey = tuple[tuple[Grid, ...], bytes | None]


def _call_key(grids: Sequence[Grid], plan: _SharePlan | None) -> CallKey:
    """What fixes a tower call's computation besides its pixels: the grids fix the layout, and
    the windows' owners the rows shared (sharing.py)."""
    return tuple(grids), None if plan is None else plan.owner.tobytes()


@dataclass
class _Shared:
    """The rows (window order) that run through the window-only blocks when images share windows."""

    keep: torch.Tensor  # the rows computed
    expand: torch.Tensor  # for every row of the batch, its row among those computed
    plan_windows: Plan
    cos: torch.Tensor
    sin: torch.Tensor


class VisionTower:
    """`ops`: the elementwise kernels (eager on the CPU when None); `window_kernel`: the fused
    Triton window attention where it applies (CUDA, half precision)."""

    def __init__(self, visual, ops: FusedOps | None = None, window_kernel: bool = True, max_layouts: int = 256):
        self.visual = visual
        self.ops = ops if ops is not None else FusedOps(torch.device("cpu"))
        self.attention = VisionAttention(window_kernel=window_kernel, qk_rope=self.ops.vision_qk_rope,
                                         linear=self.ops.linear, batch_invariant=self.ops.batch_invariant)
        act = getattr(visual.config, "hidden_act", "silu")
        if act != "silu":
            raise ValueError(f"unsupported vision activation {act!r} (Qwen2.5-VL uses silu)")
        self.merge = visual.spatial_merge_size
        self.unit = self.merge**2
        self.blocks = visual.blocks
        self.full_blocks = set(visual.fullatt_block_indexes)
        # Blocks before this one attend within windows only: there, images can share windows.
        self.window_only = min(self.full_blocks, default=len(self.blocks))
        self.patch_size = int(visual.patch_size)
        proj = visual.patch_embed.proj
        plain = (
            isinstance(proj, torch.nn.Conv3d) and proj.bias is None and tuple(proj.stride) == tuple(proj.kernel_size)
            and all(p == 0 for p in proj.padding) and proj.groups == 1
        )
        # [out, in * t * p * p]: a view, in the (C, T, P, P) order the patches are flattened in.
        self.patch_weight = proj.weight.view(proj.out_channels, -1) if plain else None
        self._layouts: LRU[Grid, _ImageLayout] = LRU(max_items=max_layouts)
        # util/graphs.GraphCapturer where tower calls may be captured (set by the executor).
        self.graphs: GraphCapturer | None = None
        self._captured: dict[CallKey, tuple[torch.Tensor, Captured]] = {}

    def _layout(self, grid: Grid) -> _ImageLayout:
        found = self._layouts.get(grid)
        if found is not None:
            return found
        visual = self.visual
        device = visual.patch_embed.proj.weight.device
        grid_t = torch.tensor([grid])
        index, cu_windows = get_vision_window_index(
            grid_t, spatial_merge_size=self.merge, window_size=visual.window_size, patch_size=visual.patch_size
        )
        positions = get_vision_position_ids(grid_t, self.merge).to(device)
        cos, sin = visual.rotary_pos_emb(visual.patch_embed.proj.weight, positions)
        order = index.to(device)
        t, h, w = grid
        patches = t * h * w
        window_index = index.numpy().astype(np.int64)
        window_lengths = [int(n) for n in torch.diff(cu_windows).tolist() if n > 0]
        unit_window = np.empty(window_index.size, dtype=np.int64)
        unit_window[window_index] = np.repeat(np.arange(len(window_lengths)), np.asarray(window_lengths) // self.unit)
        layout = _ImageLayout(
            patches=patches,
            frame=h * w,
            window_index=window_index,
            window_lengths=window_lengths,
            unit_window=unit_window,
            cos=self._window_order(cos, order),
            sin=self._window_order(sin, order),
        )
        self._layouts.put(grid, layout)
        return layout

    def _window_order(self, x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        return x.reshape(n // self.unit, self.unit, -1)[index].reshape(n, -1)

    @torch.inference_mode()
    def __call__(
        self, pixels: torch.Tensor, grids: Sequence[Grid], shares: Sequence[WindowShare | None] | None = None
    ) -> torch.Tensor:
        """Merged embeddings [sum(tokens), out_hidden] of the images, in order. `shares`: for each
        image, the windows it has in common with an earlier one (sharing.py), or None."""
        grids = [_grid(g) for g in grids]
        plan = self._share_plan(grids, shares)
        if self._captured:
            found = self._captured.get(_call_key(grids, plan))
            if found is not None:
                static, captured = found
                static.copy_(pixels)
                return captured.replay().clone()
        layout = self._batch_layout(grids, pixels.device)
        return self._forward(pixels, layout, self._shared(plan, layout) if plan is not None else None)

    def changed_windows(self, grid: Grid, region: tuple[int, int, int, int]) -> np.ndarray:
        """Which of an image's windows (window order) the rows and columns [y0, y1) x [x0, x1) of
        its resized picture reach: every merge unit (its `merge * patch_size` pixels square) under
        the region marks its window."""
        grid = _grid(grid)
        layout = self._layout(grid)
        y0, y1, x0, x1 = region
        side = self.merge * self.patch_size
        t, h, w = grid
        rows, cols = h // self.merge, w // self.merge
        out = np.zeros(len(layout.window_lengths), dtype=bool)
        if y1 <= y0 or x1 <= x0:
            return out
        r = np.arange(max(0, y0 // side), min(rows, -(-y1 // side)))
        c = np.arange(max(0, x0 // side), min(cols, -(-x1 // side)))
        units = (np.arange(t)[:, None, None] * rows * cols + r[None, :, None] * cols + c[None, None, :]).ravel()
        out[layout.unit_window[units]] = True
        return out

    def _share_plan(self, grids: Sequence[Grid], shares: Sequence[WindowShare | None] | None) -> _SharePlan | None:
        """Each window's rows through the window-only blocks when images share windows: each
        window once, at its first image; None when none is shared."""
        if shares is None or self.window_only == 0:
            return None
        layouts = [self._layout(_grid(g)) for g in grids]
        counts = [len(lay.window_lengths) for lay in layouts]
        first = np.cumsum([0, *counts[:-1]])  # each image's first window among the batch's
        lengths = np.concatenate([np.asarray(lay.window_lengths, dtype=np.int64) for lay in layouts])
        owner = np.arange(lengths.size)  # the window whose rows each window takes
        for i, share in enumerate(shares):
            if share is None:
                continue
            src = share.source
            if not 0 <= src < i or _grid(grids[src]) != _grid(grids[i]) or share.same.size != counts[i]:
                raise ValueError(f"image {i} cannot share windows with image {share.source}")
            same = np.flatnonzero(share.same)
            owner[first[i] + same] = owner[first[src] + same]  # sources are settled first
        plan = _SharePlan(owner, lengths)
        return None if plan.kept.all() else plan

    def _shared(self, plan: _SharePlan, layout: _BatchLayout) -> _Shared:
        """The shared rows of `plan` on the device."""
        owner, lengths, kept = plan.owner, plan.lengths, plan.kept
        starts = np.cumsum(lengths) - lengths  # each window's first row in the batch
        compact = np.cumsum(np.where(kept, lengths, 0)) - np.where(kept, lengths, 0)  # among kept rows
        inside = np.arange(int(lengths.sum())) - np.repeat(starts, lengths)
        keep = np.repeat(starts[kept], lengths[kept]) + inside[np.repeat(kept, lengths)]
        expand = np.repeat(compact[owner], lengths) + inside
        bounds = [0, *np.cumsum(lengths[kept]).tolist()]
        device = layout.cos.device
        keep_t = to_device(torch.from_numpy(keep), device)
        return _Shared(
            keep=keep_t,
            expand=to_device(torch.from_numpy(expand), device),
            plan_windows=Plan(to_device(torch.tensor(bounds, dtype=torch.int32), device), bounds),
            cos=layout.cos[keep_t],
            sin=layout.sin[keep_t],
        )

    @property
    def captured_calls(self) -> list[tuple[Grid, ...]]:
        """The grids of each captured call (a grid repeats for a picture's masked cells)."""
        return [grids for grids, _ in self._captured]

    @torch.inference_mode()
    def capture(self, grids: Sequence[Grid], dtype: torch.dtype, shares: Sequence[WindowShare | None] | None = None
                ) -> bool:
        """Captures the tower call of images of `grids` sharing `shares` as a CUDA graph (at
        start-up: no other GPU work may run meanwhile) and keeps it if a replay on random pixels
        matches the eager forward (within GRAPH_ATOL + GRAPH_RTOL of the largest output; bit for
        bit in the batch-invariant mode). A call with the same grids and the same shared windows
        replays it. False where it is not kept (such calls run eagerly)."""
        grids = [_grid(g) for g in grids]
        plan = self._share_plan(grids, shares)
        key = _call_key(grids, plan)
        if self.graphs is None or key in self._captured:
            return key in self._captured
        weight = self.visual.patch_embed.proj.weight
        patches = sum(t * h * w for t, h, w in grids)
        static = torch.zeros(patches, weight[0].numel(), dtype=dtype, device=weight.device)
        # Host-to-device copies stay outside the graph: the layout is made once, here (the
        # captured function holds it for the graph's life), and whatever the attention plans build
        # lazily is built by the capturer's warm-up calls.
        layout = self._batch_layout(grids, weight.device)
        shared = self._shared(plan, layout) if plan is not None else None
        try:
            captured = self.graphs.capture(lambda: self._forward(static, layout, shared))
            pixels = torch.randn(static.shape, generator=torch.Generator().manual_seed(0)).to(static.device, dtype)
            eager = self._forward(pixels, layout, shared).float()
            static.copy_(pixels)
            replayed = captured.replay().float()
            diff = float((replayed - eager).abs().max())
            limit = 0.0 if self.ops.batch_invariant else GRAPH_ATOL + GRAPH_RTOL * float(eager.abs().max())
            if not diff <= limit:
                raise RuntimeError(f"its replay is {diff:.3g} from the eager forward")
        except Exception as exc:  # a graph is an optimisation: such images run eagerly
            log.warning("the vision tower's CUDA graph for %d image(s) of grids %s is not used (%s); they run eagerly",
                        len(grids), sorted(set(grids)), exc)
            return False
        self._captured[key] = (static, captured)
        return True

    def _batch_layout(self, grids: Sequence[Grid], device: torch.device) -> _BatchLayout:
        layouts = [self._layout(_grid(g)) for g in grids]
        unit_offsets = np.cumsum([0] + [lay.patches // self.unit for lay in layouts[:-1]])
        window_index = np.concatenate([lay.window_index + off for lay, off in zip(layouts, unit_offsets)])
        reverse = np.empty_like(window_index)
        reverse[window_index] = np.arange(window_index.size)
        frames = [lay.frame for lay in layouts for _ in range(lay.patches // lay.frame)]
        windows = [n for lay in layouts for n in lay.window_lengths]
        full_bounds = [0, *np.cumsum(frames).tolist()]
        window_bounds = [0, *np.cumsum(windows).tolist()]
        cu_full = to_device(torch.tensor(full_bounds, dtype=torch.int32), device)
        cu_windows = to_device(torch.tensor(window_bounds, dtype=torch.int32), device)
        # The attention's plans from these host-side bounds: reading them back would wait for the GPU.
        return _BatchLayout(
            plan_full=Plan(cu_full, full_bounds),
            plan_windows=Plan(cu_windows, window_bounds),
            cos=torch.cat([lay.cos for lay in layouts]),
            sin=torch.cat([lay.sin for lay in layouts]),
            window_index=to_device(torch.from_numpy(window_index), device),
            reverse=to_device(torch.from_numpy(reverse), device),
        )

    def _forward(self, pixels: torch.Tensor, layout: _BatchLayout, shared: _Shared | None = None) -> torch.Tensor:
        if self.patch_weight is not None:
            x = self.ops.linear_weight(pixels.to(self.patch_weight.dtype), self.patch_weight)
        else:
            x = self.visual.patch_embed(pixels)
        n = x.shape[0]
        x = x.view(n // self.unit, self.unit, -1)[layout.window_index].view(n, -1)
        if shared is not None:
            x = x[shared.keep]
        first = self.blocks[0].norm1
        h = self.ops.rms_norm(x, first.weight, first.variance_epsilon)
        last = len(self.blocks) - 1
        for i, block in enumerate(self.blocks):
            plan, cos, sin = layout.plan_windows, layout.cos, layout.sin
            if i in self.full_blocks:
                plan = layout.plan_full
            elif shared is not None and i < self.window_only:
                plan, cos, sin = shared.plan_windows, shared.cos, shared.sin
            # Each block's residual add is fused with the norm that follows it: the next block's
            # norm1, or the merger's ln_q after the last block.
            after = self.blocks[i + 1].norm1 if i < last else self.visual.merger.ln_q
            x, h = self._block(block, x, h, plan, cos, sin, after)
            if shared is not None and i == self.window_only - 1:
                x, h = x[shared.expand], h[shared.expand]
        return self._merge(h)[layout.reverse]

    def _merge(self, h: torch.Tensor) -> torch.Tensor:
        """The patch merger (`Qwen2_5_VLPatchMerger.forward`) after its norm `ln_q` (`h`): its MLP
        over each merge unit's rows side by side, the same arithmetic as the module's."""
        merger = self.visual.merger
        first, act, last = merger.mlp
        return self.ops.linear(last, self.ops.activation(act, self.ops.linear(first, h.view(-1, merger.hidden_size))))

    def _block(self, block, x: torch.Tensor, h: torch.Tensor, plan: Plan, cos: torch.Tensor, sin: torch.Tensor,
               after: torch.nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
        """`Qwen2_5_VLVisionBlock.forward` with the block's weights, the same arithmetic, fused: `h`
        is norm1(x) on the way in; out go the block's output and `after`(it) (an RMSNorm)."""
        ops = self.ops
        x, h = ops.add_rms_norm(x, self.attention(block.attn, h, plan, cos, sin), block.norm2.weight,
                                block.norm2.variance_epsilon)
        mlp = block.mlp
        delta = ops.linear(mlp.down_proj, ops.gate_up_silu(mlp.gate_proj, mlp.up_proj, h))
        return ops.add_rms_norm(x, delta, after.weight, after.variance_epsilon)
