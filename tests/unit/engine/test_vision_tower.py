"""The cached-layout vision tower computes what transformers' tower forward computes."""

from __future__ import annotations

import pytest
import torch

from lychee_grpc.engine.config import EngineConfig
from lychee_grpc.engine.lm.fused import FusedOps
from lychee_grpc.engine.model.loader import load_model
from lychee_grpc.engine.util.graphs import GraphCapturer
from lychee_grpc.engine.vision.tower import VisionTower

from ...helpers import CallingCapturer

GRIDS = [(1, 16, 16), (1, 20, 28), (1, 8, 12), (1, 16, 16)]  # windows both full and cut at the edges


def _pixels(grids, seed=0):
    n = sum(t * h * w for t, h, w in grids)
    return torch.randn(n, 3 * 2 * 14 * 14, generator=torch.Generator().manual_seed(seed))


def _reference(visual, pixels, grids):
    with torch.inference_mode():
        return visual(pixels, grid_thw=torch.tensor(grids)).pooler_output


def test_tower_matches_transformers_forward_for_mixed_grids(loaded):
    visual = loaded.model.model.visual
    pixels = _pixels(GRIDS)
    tower = VisionTower(visual)
    assert tower.patch_weight is not None  # the Conv3d runs as a GEMM
    ref = _reference(visual, pixels, GRIDS)
    got = tower(pixels, GRIDS)
    assert got.shape == ref.shape and ref.abs().max() > 0.1
    assert torch.allclose(got, ref, rtol=1e-4, atol=1e-5)
    # A second batch in another order reuses the cached layouts and still matches.
    order = [2, 0, 3, 1]
    grids = [GRIDS[i] for i in order]
    pixels2 = _pixels(grids, seed=1)
    assert torch.allclose(tower(pixels2, grids), _reference(visual, pixels2, grids), rtol=1e-4, atol=1e-5)
    assert set(tower._layouts.keys()) == set(GRIDS)


def test_tower_falls_back_to_the_patch_embedding_module(loaded):
    visual = loaded.model.model.visual
    tower = VisionTower(visual)
    tower.patch_weight = None
    pixels = _pixels(GRIDS[:2])
    assert torch.allclose(tower(pixels, GRIDS[:2]), _reference(visual, pixels, GRIDS[:2]), rtol=1e-4, atol=1e-5)


def test_layout_cache_is_bounded(loaded):
    tower = VisionTower(loaded.model.model.visual, max_layouts=2)
    for grid in [(1, 4, 4), (1, 4, 8), (1, 8, 4)]:
        tower(_pixels([grid]), [grid])
    assert tower._layouts.keys() == [(1, 4, 8), (1, 8, 4)]


def test_one_image_of_a_captured_grid_replays_its_graph_and_scores_as_eager(loaded):
    visual = loaded.model.model.visual
    eager, graphed = VisionTower(visual), VisionTower(visual)
    graphed.graphs = capturer = CallingCapturer()
    grid = GRIDS[0]
    assert graphed.capture([grid], torch.float32) and graphed.captured_calls == [(grid,)]
    validation_replays = capturer.replays
    pixels = _pixels([grid], seed=3)
    assert torch.equal(graphed(pixels, [grid]), eager(pixels, [grid]))
    assert capturer.replays == validation_replays + 1
    # Another grid, and two images of the captured grid, run eagerly.
    for grids in ([GRIDS[1]], [grid, grid]):
        pixels = _pixels(grids, seed=4)
        assert torch.equal(graphed(pixels, grids), eager(pixels, grids))
    assert capturer.replays == validation_replays + 1


def test_a_tower_graph_that_replays_wrong_is_dropped_and_its_grid_runs_eagerly(loaded):
    visual = loaded.model.model.visual
    tower = VisionTower(visual)
    tower.graphs = capturer = CallingCapturer(shift=1.0)
    grid = GRIDS[0]
    assert not tower.capture([grid], torch.float32) and tower.captured_calls == []
    replays = capturer.replays
    pixels = _pixels([grid], seed=5)
    assert torch.equal(tower(pixels, [grid]), VisionTower(visual)(pixels, [grid]))
    assert capturer.replays == replays


def test_in_the_batch_invariant_mode_a_tower_graph_one_rounding_step_off_is_dropped(loaded):
    visual = loaded.model.model.visual
    grid = GRIDS[0]
    for batch_invariant, kept in ((False, True), (True, False)):
        tower = VisionTower(visual, FusedOps(torch.device("cpu"), batch_invariant=batch_invariant))
        tower.graphs = CallingCapturer(shift=1e-6)
        assert tower.capture([grid], torch.float32) is kept


@pytest.mark.gpu
def test_a_real_tower_graph_replays_right_after_the_allocator_has_reused_freed_memory(tiny_model_dir):
    """The first tower graph let its layout (window order, plans, rotary tables) go when the
    capture returned; its replay then read whatever the allocator put there since."""
    loaded = load_model(EngineConfig(model=tiny_model_dir, device="cuda", dtype="bfloat16"))
    visual = loaded.model.model.visual
    device = visual.patch_embed.proj.weight.device
    tower = VisionTower(visual, FusedOps(device))
    tower.graphs = GraphCapturer(device)
    grid = GRIDS[0]
    assert tower.capture([grid], torch.bfloat16)
    # Whatever the capture freed is handed out again, filled with out-of-range indices.
    churn = [torch.full((n,), 1 << 40, dtype=torch.long, device=device) for n in range(1, 4096, 7)]
    pixels = _pixels([grid], seed=6).to(device, torch.bfloat16)
    replayed = tower(pixels, [grid]).float()
    torch.cuda.synchronize()
    eager = VisionTower(visual, FusedOps(device))(pixels, [grid]).float()
    del churn
    assert (replayed - eager).abs().max() <= 0.05 + 0.02 * eager.abs().max()
