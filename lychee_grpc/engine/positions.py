"""Qwen2.5-VL multimodal RoPE positions (temporal, height, width) for one token sequence.

Text tokens advance all three axes together; an image's merged patches take a (t, h, w) grid
offset by the current position, after which text resumes at position + max(h, w). Computed per
sequence so a document's positions can continue a shared prefix.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch


def mrope_positions(
    ids: torch.Tensor, image_token_id: int, grids: Sequence[tuple[int, int, int]], merge: int
) -> torch.Tensor:
    n = ids.numel()
    out = torch.empty(3, n, dtype=torch.long)
    is_image = ids == image_token_id
    # Boundaries where the token kind changes give text runs and image runs.
    change = torch.nonzero(is_image[1:] != is_image[:-1]).flatten().add_(1).tolist()
    bounds = [0, *change, n]
    cur = 0
    grid_iter = iter(grids)
    for start, end in itertools.pairwise(bounds):
        if not bool(is_image[start]):
            out[:, start:end] = torch.arange(cur, cur + end - start)
            cur += end - start
            continue
        pos = start
        while pos < end:  # consecutive images with no token between them (never in our template)
            t, h, w = next(grid_iter)
            lh, lw = h // merge, w // merge
            count = t * lh * lw
            out[0, pos : pos + count] = torch.arange(t).repeat_interleave(lh * lw) + cur
            out[1, pos : pos + count] = torch.arange(lh).repeat_interleave(lw).repeat(t) + cur
            out[2, pos : pos + count] = torch.arange(lw).repeat(t * lh) + cur
            cur += max(h, w) // merge
            pos += count
    return out
