"""Zero-pads the vision tower's MLP width to a multiple of 16.

Qwen2.5-VL's vision MLP is 3420 wide, which is not a multiple of 16 elements. cuBLAS then cannot
use its Hopper (TMA) kernels and falls back to slower sm80 ones; on an H100 those GEMMs
dominated the tower. The padding is exact: a padded channel has zero gate and up weights and
bias, so it contributes silu(0) * 0 = 0 through zero columns of down_proj.
"""

from __future__ import annotations

import torch
from torch import nn


def _pad_rows(linear: nn.Linear, rows: int) -> None:
    weight = linear.weight
    padded = torch.zeros(rows, weight.shape[1], dtype=weight.dtype, device=weight.device)
    padded[: weight.shape[0]] = weight
    linear.weight = nn.Parameter(padded, requires_grad=False)
    if linear.bias is not None:
        bias = torch.zeros(rows, dtype=linear.bias.dtype, device=linear.bias.device)
        bias[: linear.bias.shape[0]] = linear.bias
        linear.bias = nn.Parameter(bias, requires_grad=False)
    linear.out_features = rows


def _pad_columns(linear: nn.Linear, columns: int) -> None:
    weight = linear.weight
    padded = torch.zeros(weight.shape[0], columns, dtype=weight.dtype, device=weight.device)
    padded[:, : weight.shape[1]] = weight
    linear.weight = nn.Parameter(padded, requires_grad=False)
    linear.in_features = columns


@torch.no_grad()
def align_vision_mlp(visual, multiple: int = 16) -> int:
    """Pads every vision block's MLP; returns the new width, or 0 when already aligned."""
    width = visual.blocks[0].mlp.gate_proj.out_features
    target = width + (-width % multiple)
    if target == width:
        return 0
    for block in visual.blocks:
        mlp = block.mlp
        _pad_rows(mlp.gate_proj, target)
        _pad_rows(mlp.up_proj, target)
        _pad_columns(mlp.down_proj, target)
    return target
