"""Images of one tower call that differ from another of them only inside a box: the windows they
have in common run once through the tower's window-only blocks.

The tower's blocks before its first full-attention block (7 of Qwen2.5-VL-7B's 32) attend within
windows of 112x112 pixels, so there a window's hidden states depend only on its own pixels and its
place in the grid. Explain masks one cell of a picture at a time: each variant equals the original
outside its cell, so every window its cell does not reach is the original's. Those windows run
once, for the first image of the group, and are copied to the others before the first
full-attention block (tower.py). In the batch-invariant mode a window's rows get the same bits
whatever they are computed with, so this changes no bit; otherwise it changes what the shared rows
are batched with, as any batch does.

Which windows a box reaches, in the resized picture the tower sees: those under the box where the
picture is not resized (the image processor returns it as it is), and where it is, those under the
box grown by the widest resampling filter's reach (Lanczos: 3 source pixels, or 3 output pixels
when shrinking with antialiasing; Qwen2.5-VL's bicubic reaches 2) and 2 pixels to spare
(tests/unit/engine/test_window_sharing.py checks both against the processor's own resize).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ..prompt.prepared import Edit, EncodedImage
from ..types import grid_cells

Grid = tuple[int, int, int]

REACH = 3  # source pixels a resampling filter reads on each side of its centre, at most (Lanczos)


@dataclass(frozen=True)
class WindowShare:
    """An image's windows (in the tower's window order) that equal those of image `source`, an
    earlier image of the same call and grid, where `same` is True."""

    source: int
    same: np.ndarray


def reach(edit: Edit, grid: Grid, patch_size: int) -> tuple[int, int, int, int]:
    """The rows and columns [y0, y1) x [x0, x1) of the resized picture (`grid`'s patches of
    `patch_size` pixels) whose pixels may differ from the base's."""
    height, width = edit.size
    out_h, out_w = grid[1] * patch_size, grid[2] * patch_size
    x, y, w, h = edit.box
    if (height, width) == (out_h, out_w):
        return y, y + h, x, x + w
    sy, sx = out_h / height, out_w / width
    margin = math.ceil(REACH * max(1.0, sy, sx)) + 2
    return (max(0, math.floor(y * sy) - margin), min(out_h, math.ceil((y + h) * sy) + margin),
            max(0, math.floor(x * sx) - margin), min(out_w, math.ceil((x + w) * sx) + margin))


def window_shares(
    images: Sequence[EncodedImage], changed: Callable[[Grid, tuple[int, int, int, int]], np.ndarray], patch_size: int
) -> list[WindowShare | None] | None:
    """For each of `images` (one tower call, in order), the windows it takes from an earlier one,
    or None; None for the call when no image shares any. `changed(grid, reach)` marks the windows
    that a region of the resized picture touches (the tower's `changed_windows`).

    Images with one base form a group with the base where it is in the call; its first image is
    the source of the rest, which take every window that neither it nor they changed."""
    index = {im.key: i for i, im in enumerate(images)}
    groups: dict[bytes, list[int]] = {}
    for i, im in enumerate(images):
        if im.edit is not None:
            groups.setdefault(im.edit.base, []).append(i)
    if not groups:
        return None
    changes = {i: changed(im.grid_thw, reach(im.edit, im.grid_thw, patch_size))
               for i, im in enumerate(images) if im.edit is not None}
    shares: list[WindowShare | None] = [None] * len(images)
    for base, members in groups.items():
        at = index.get(base)
        group = sorted({*members, at} if at is not None else members)
        first = group[0]
        first_changed = None if first == at else changes[first]  # the base changed none of its windows
        for i in group[1:]:
            if images[i].grid_thw != images[first].grid_thw or shares[i] is not None:
                continue  # a size the base does not have; or already sharing (bases that nest)
            mine = None if i == at else changes[i]
            differ = mine if first_changed is None else first_changed if mine is None else mine | first_changed
            assert differ is not None  # only one image of a group is its base
            if not differ.all():
                shares[i] = WindowShare(first, ~differ)
    return shares if any(s is not None for s in shares) else None


def masked_cells(grid: Grid, size: tuple[int, int], cells: int, tokens: int) -> list[EncodedImage]:
    """A picture of `size` (height, width) that the tower sees as `grid`, then its `cells` x
    `cells` masked cells (`types.grid_cells`, as Explain masks them): the images of the tower call
    the executor captures at start-up. Only their grids and edits (so the windows they share)
    matter to the tower; they carry no pixels."""
    height, width = size
    base = b"masked cells: the picture"

    def no_pixels() -> torch.Tensor:
        raise RuntimeError("a stand-in image of a captured tower call has no pixels")

    images = [EncodedImage(key=base, grid_thw=grid, tokens=tokens, pixel_values=None, decode=no_pixels)]
    for k, box in enumerate(grid_cells(width, height, cells)):
        images.append(EncodedImage(key=b"masked cells: cell %d" % k, grid_thw=grid, tokens=tokens,
                                   pixel_values=None, decode=no_pixels, edit=Edit(base, box, size)))
    return images
