"""The fused rotary + window attention kernel on the GPU, alone (no model): every window geometry
the tower produces for a few image sizes, against transformers' rotary + per-window SDPA in
float32. Run it under `compute-sanitizer --tool memcheck` to check its memory accesses.

    python3 bench/window_kernel_check.py [num_warps=8]
    compute-sanitizer --tool memcheck python3 bench/window_kernel_check.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import apply_rotary_pos_emb_vision
from transformers.vision_utils import get_vision_window_index

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import itertools

from lychee_grpc.engine.vision_window_kernel import KERNEL_OPTIONS, window_attention_rope


def check(grids: list[tuple[int, int, int]], heads: int = 16, head_dim: int = 80) -> float:
    _, cu = get_vision_window_index(torch.tensor(grids), spatial_merge_size=2, window_size=112, patch_size=14)
    bounds = sorted(set(cu.tolist()))
    n = bounds[-1]
    cu_dev = torch.tensor(bounds, dtype=torch.int32, device="cuda")
    qkv = torch.randn(n, 3 * heads * head_dim, device="cuda", dtype=torch.bfloat16)
    cos, sin = torch.randn(n, head_dim, device="cuda"), torch.randn(n, head_dim, device="cuda")
    got = window_attention_rope(qkv, cos, sin, cu_dev, len(bounds) - 1, heads, head_dim**-0.5).float()
    q, k, v = qkv.view(n, 3, heads, head_dim).unbind(1)
    q, k = apply_rotary_pos_emb_vision(q, k, cos, sin)
    worst = 0.0
    for a, b in itertools.pairwise(bounds):
        o = torch.nn.functional.scaled_dot_product_attention(
            *(t[a:b].transpose(0, 1).float() for t in (q, k, v)), scale=head_dim**-0.5)
        worst = max(worst, (got[a:b] - o.transpose(0, 1).reshape(b - a, -1)).abs().max().item())
    torch.cuda.synchronize()
    return worst


def main() -> int:
    for arg in sys.argv[1:]:  # e.g. num_warps=4
        key, value = arg.split("=")
        KERNEL_OPTIONS[key] = int(value)
    print(f"kernel options {KERNEL_OPTIONS}")
    cases = {"warm-up 56x56": [(1, 4, 4)], "one 448x448": [(1, 32, 32)], "25 x 448x448": [(1, 32, 32)] * 25,
             "odd sizes": [(1, 10, 22), (1, 6, 8), (1, 64, 48), (1, 2, 2)]}
    worst = 0.0
    for name, grids in cases.items():
        for _ in range(3):
            diff = check(grids)
            worst = max(worst, diff)
        print(f"{name}: max |kernel - float32 reference| {diff:.3g}", flush=True)
    print("OK" if worst < 0.05 else "MISMATCH")
    return 0 if worst < 0.05 else 1


if __name__ == "__main__":
    sys.exit(main())
