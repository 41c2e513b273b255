"""The cached-layout vision tower computes what transformers' tower forward computes."""

from __future__ import annotations

import torch

from lychee_grpc.engine.vision.tower import VisionTower

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
