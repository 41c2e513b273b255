"""The fused rotary + window attention kernel on the GPU, alone (no model): every window geometry
the tower produces for a few image sizes, against transformers' rotary + per-window SDPA in
float32. Run it under `compute-sanitizer --tool memcheck` to check its memory accesses.

    python -m bench.kernels.window_kernel_check [num_warps=8]
    compute-sanitizer --tool memcheck python -m bench.kernels.window_kernel_check
    python -m bench.kernels.window_kernel_check --tower    # the whole tower in bf16 vs float32, kernel on / off
"""

from __future__ import annotations

import itertools
import sys

import torch
from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import apply_rotary_pos_emb_vision
from transformers.vision_utils import get_vision_window_index

from lychee_grpc.engine.vision.window_kernel import KERNEL_OPTIONS, window_attention_rope


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


def tower_check(images: int = 25) -> None:
    """The full-size vision tower (RANDOM weights) in bf16, with and without the kernel, against
    the same tower in float32 (TF32 off), which the kernel does not take."""
    from bench.harness.model import Shape, build_model
    from lychee_grpc.engine.vision.tower import VisionTower

    loaded = build_model(shape=Shape(layers=1), dtype=torch.float32)
    visual = loaded.model.model.visual
    grids = [(1, 32, 32)] * images
    torch.manual_seed(1)
    pixels = torch.randn(images * 1024, 3 * 2 * 14 * 14, device="cuda")
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    with torch.inference_mode():
        ref = VisionTower(visual)(pixels, grids).float()
        visual.to(torch.bfloat16)
        out = {on: VisionTower(visual, window_kernel=on)(pixels.bfloat16(), grids).float() for on in (False, True)}
    for on, name in ((False, "rotary + cuDNN SDPA"), (True, "fused kernel")):
        rel = ((out[on] - ref).norm() / ref.norm()).item()
        print(f"tower, {images} 448x448 images, bf16 with {name} vs float32: relative error {rel:.3e}, "
              f"max abs {(out[on] - ref).abs().max().item():.3g} (|float32| max {ref.abs().max().item():.3g})")


def main() -> int:
    if "--tower" in sys.argv:
        tower_check()
        return 0
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
