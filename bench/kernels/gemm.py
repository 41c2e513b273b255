"""The model's GEMM shapes under both weight layouts, timed on the GPU (random inputs): nn.Linear's
[out, in] weight (cuBLAS "TN") against the same weight stored [in, out] ("NN").

    python -m bench.kernels.gemm
"""

from __future__ import annotations

import sys

import torch
import torch.nn.functional as F

from bench.harness.timing import time_ms


def main() -> int:
    dev, bf = "cuda", torch.bfloat16
    shapes = [("LM q/o", 10889, 3584, 3584), ("LM k/v", 10889, 3584, 512), ("LM gate/up", 10889, 3584, 18944),
              ("LM down", 10889, 18944, 3584), ("ViT qkv", 102400, 1280, 3840), ("ViT proj", 102400, 1280, 1280),
              ("ViT gate/up", 102400, 1280, 3424), ("ViT down", 102400, 3424, 1280)]
    print(f"{'shape':12s} {'M':>6s} {'K':>6s} {'N':>6s} {'[out,in] ms':>12s} {'[in,out] ms':>12s} "
          f"{'TFLOP/s':>8s} {'TFLOP/s':>8s}")
    for name, m, k, n in shapes:
        x = torch.randn(m, k, device=dev, dtype=bf)
        w = torch.randn(n, k, device=dev, dtype=bf) / k**0.5
        wt = w.t().contiguous().t()  # same values, [in, out] in memory
        a = time_ms(lambda x=x, w=w: F.linear(x, w))
        b = time_ms(lambda x=x, wt=wt: F.linear(x, wt))
        flop = 2 * m * k * n
        print(f"{name:12s} {m:6d} {k:6d} {n:6d} {a:12.3f} {b:12.3f} {flop / a / 1e9:8.0f} {flop / b / 1e9:8.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
