"""M-RoPE positions equal transformers' get_rope_index for text and image runs."""

from __future__ import annotations

import torch

from lychee_grpc.engine.prompt.positions import mrope_positions

IMAGE = 99


def _sequence(parts):
    ids, grids = [], []
    for p in parts:
        if isinstance(p, tuple):
            t, h, w = p
            ids += [IMAGE] * (t * h * w // 4)
            grids.append(p)
        else:
            ids += list(range(1, p + 1))
    return torch.tensor(ids), grids


def test_positions_match_transformers_rope_index(loaded):
    model = loaded.model.model
    image_id = loaded.model.config.image_token_id
    for parts in ([5, (1, 4, 6), 3], [2, (1, 8, 4), 4, (1, 6, 6), 1], [7]):
        ids, grids = _sequence(parts)
        ids = torch.where(ids == IMAGE, torch.tensor(image_id), ids)
        got = mrope_positions(ids, image_id, grids, 2)
        if not grids:
            assert torch.equal(got, torch.arange(len(ids)).expand(3, -1))
            continue
        ref, _ = model.get_rope_index(
            ids[None], mm_token_type_ids=(ids == image_id).int()[None], image_grid_thw=torch.tensor(grids)
        )
        assert torch.equal(got, ref[:, 0])


def test_laid_out_positions_equal_those_computed_from_the_ids():
    import random

    from lychee_grpc.engine.prompt.positions import laid_out_positions

    rng = random.Random(4)
    grids = [(1, 4, 6), (1, 8, 4), (1, 6, 6), (1, 2, 2), (1, 10, 4)]
    for _ in range(200):
        ids: list[int] = []
        blocks, chosen = [], []
        for _ in range(rng.randint(0, 3)):
            ids += list(range(1, rng.randint(0, 6) + 1))
            grid = rng.choice(grids)
            blocks.append((len(ids), grid))
            chosen.append(grid)
            ids += [IMAGE] * (grid[1] * grid[2] // 4)
        ids += list(range(1, rng.randint(1, 6) + 1))  # a document's segment ends in text (its tail)
        start = rng.randint(0, 50)
        # A sequence placed after `start` text tokens: mrope_positions of the whole, cut.
        whole = mrope_positions(torch.tensor([1] * start + ids), IMAGE, chosen, 2)[:, start:]
        got = laid_out_positions(start, len(ids), blocks, 2)
        assert torch.equal(torch.from_numpy(got), whole), (start, blocks)
