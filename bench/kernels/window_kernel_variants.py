"""Grids for the tower's window-attention kernel, timed against the engine's on the GPU alone (no
model), outputs compared bit for bit: the engine's one program per (window, head) against one
program per window that loops over the 16 heads (its cos/sin rows loaded once, the loop pipelined
by Triton over `stages`), at 4 and 8 warps. RANDOM inputs over the window layouts of 100 448x448
images, 100 640x480 images and one 448x448 image.

    python -m bench.kernels.window_kernel_variants

Under TRITON_INTERPRET=1 (CPU) `--check` only compares the outputs on a small layout.
"""

from __future__ import annotations

import argparse
import functools
import sys

import torch
import triton
import triton.language as tl
from transformers.vision_utils import get_vision_window_index

from lychee_grpc.engine.vision import window_kernel
from lychee_grpc.engine.vision.window_kernel import _rotated, _split

LAYOUTS = (("100 x 448x448", [(1, 32, 32)] * 100), ("100 x 640x480", [(1, 34, 46)] * 100),
           ("one 448x448", [(1, 32, 32)]))


@triton.jit
def _window_heads_kernel(
    qkv_ptr, cos_ptr, sin_ptr, out_ptr, cu_ptr, scale,
    H: tl.constexpr, D: tl.constexpr, HALF: tl.constexpr, DA: tl.constexpr, DB: tl.constexpr,
    BLOCK: tl.constexpr, STAGES: tl.constexpr, HEADS_PER_PROGRAM: tl.constexpr,
):
    program = tl.program_id(0)
    groups: tl.constexpr = H // HEADS_PER_PROGRAM
    window = program // groups
    first_head = (program % groups) * HEADS_PER_PROGRAM
    start = tl.load(cu_ptr + window)
    length = tl.load(cu_ptr + window + 1) - start
    rows = tl.arange(0, BLOCK)
    valid = rows < length
    ROW: tl.constexpr = 3 * H * D
    cos_base = cos_ptr + start * D
    sin_base = sin_ptr + start * D
    da = tl.arange(0, DA)
    db = DA + tl.arange(0, DB)
    dtype = qkv_ptr.dtype.element_ty
    for h in tl.range(0, HEADS_PER_PROGRAM, num_stages=STAGES):
        head = first_head + h
        q_base = qkv_ptr + start * ROW + head * D
        k_base = q_base + H * D
        v_base = k_base + H * D
        qa = _rotated(q_base, rows, valid, cos_base, sin_base, da, HALF, D, ROW).to(dtype)
        qb = _rotated(q_base, rows, valid, cos_base, sin_base, db, HALF, D, ROW).to(dtype)
        ka = _rotated(k_base, rows, valid, cos_base, sin_base, da, HALF, D, ROW).to(dtype)
        kb = _rotated(k_base, rows, valid, cos_base, sin_base, db, HALF, D, ROW).to(dtype)
        s = tl.dot(qa, tl.trans(ka)) + tl.dot(qb, tl.trans(kb))
        s = tl.where(valid[None, :], s * scale, float("-inf"))
        p = tl.exp(s - tl.max(s, axis=1)[:, None])
        va = tl.load(v_base + rows[:, None] * ROW + da[None, :], mask=valid[:, None], other=0.0)
        vb = tl.load(v_base + rows[:, None] * ROW + db[None, :], mask=valid[:, None], other=0.0)
        total = tl.sum(p, axis=1)[:, None]
        p = p.to(dtype)
        oa = tl.dot(p, va) / total
        ob = tl.dot(p, vb) / total
        o_base = out_ptr + start * (H * D) + head * D
        tl.store(o_base + rows[:, None] * (H * D) + da[None, :], oa.to(dtype), mask=valid[:, None])
        tl.store(o_base + rows[:, None] * (H * D) + db[None, :], ob.to(dtype), mask=valid[:, None])


def looped(qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, cu: torch.Tensor, windows: int, heads: int,
           scale: float, per_program: int, stages: int, warps: int) -> torch.Tensor:
    n = qkv.shape[0]
    head_dim = qkv.shape[-1] // (3 * heads)
    split = _split(head_dim)
    assert split is not None
    out = qkv.new_empty(n, heads * head_dim)
    _window_heads_kernel[(windows * (heads // per_program),)](
        qkv, cos.contiguous(), sin.contiguous(), out, cu, scale,
        H=heads, D=head_dim, HALF=head_dim // 2, DA=split[0], DB=split[1], BLOCK=window_kernel.MAX_WINDOW,
        STAGES=stages, HEADS_PER_PROGRAM=per_program, num_warps=warps)  # pyright: ignore[reportCallIssue]
    return out


VARIANTS = [(per, stages, warps) for per in (16, 4, 2) for stages in (1, 2, 3) for warps in (4, 8)]


def inputs(grids, device: str, heads: int = 16, head_dim: int = 80):
    _, cu = get_vision_window_index(torch.tensor(grids), spatial_merge_size=2, window_size=112, patch_size=14)
    bounds = sorted(set(cu.tolist()))
    n, windows = bounds[-1], len(bounds) - 1
    cu_dev = torch.tensor(bounds, dtype=torch.int32, device=device)
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    qkv = torch.randn(n, 3 * heads * head_dim, device=device).to(dtype)
    cos, sin = torch.randn(n, head_dim, device=device), torch.randn(n, head_dim, device=device)
    return (qkv, cos, sin, cu_dev, windows, heads, head_dim**-0.5), n, windows


def main() -> int:
    p = argparse.ArgumentParser(prog="python -m bench.kernels.window_kernel_variants",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--check", action="store_true", help="compare outputs on a small layout only (CPU interpreter)")
    p.add_argument("--only", help="one variant, 'per_program,stages,warps' (a faulting variant ends its process: "
                                  "run each in its own)")
    a = p.parse_args()
    variants = [tuple(int(x) for x in a.only.split(","))] if a.only else VARIANTS
    torch.manual_seed(0)
    if a.check:
        args, n, windows = inputs([(1, 8, 8), (1, 6, 10)], "cpu")
        want = window_kernel.window_attention_rope(*args)
        for per in (16, 4):
            got = looped(*args, per_program=per, stages=1, warps=4)
            print(f"per_program {per}: max diff {(got - want).abs().max().item():.3e}, equal {torch.equal(got, want)}")
        return 0
    from bench.harness.timing import time_ms

    print("RANDOM inputs; the window kernel's grid: (window, head) programs (the engine's) against programs "
          "looping over heads (per program, stages, warps)")
    for label, grids in LAYOUTS:
        args, n, windows = inputs(grids, "cuda")
        engine = functools.partial(window_kernel.window_attention_rope, *args)
        want = engine()
        base = min(time_ms(engine, iters=20, warmup=2) for _ in range(3))
        print(f"{label}: {n} patches, {windows} windows: engine {base:.3f} ms")
        for per, stages, warps in variants:
            fn = functools.partial(looped, *args, per_program=per, stages=stages, warps=warps)
            try:
                same = torch.equal(fn(), want)
                ms = min(time_ms(fn, iters=20, warmup=2) for _ in range(3))
            except Exception as exc:  # a variant Triton cannot build, or one that faults
                print(f"  heads/program {per:2d}, stages {stages}, warps {warps}: failed: {str(exc)[:100]}")
                return 1
            print(f"  heads/program {per:2d}, stages {stages}, warps {warps}: {ms:.3f} ms = {base / ms:.2f}x the "
                  f"engine's, bit-identical {same}")
        torch.cuda.synchronize()
    return 0


if __name__ == "__main__":
    sys.exit(main())
